// The sessions page: every live session of the user (GET /auth/sessions), ending one
// (DELETE /auth/sessions/{id}), ending all the others (POST /auth/logout-all), and the
// recently ended ones with the reason (a theft detection shows up there) and the device and
// address that had signed in (from the sign-in events, GET /auth/events).
import {
  describeDevice, formatDate, formatRelative, showNotice, showProblem,
  wireLogout, withBusy,
} from "./ui.js";

const api = (...args) => window.Tokenward.api(...args);

const ENDED_REASONS = {
  "logout": "Signed out",
  "logout-all": "Signed out everywhere",
  "revoked": "Ended from another device",
  "refresh-reused": "Ended for safety: its credentials were used twice",
  "password-changed": "Ended by a password change",
  "session-limit": "Ended: too many sessions",
  "user-disabled": "Ended: account disabled",
};

wireLogout();

const panel = document.querySelector("[data-sessions]");
const activeList = document.querySelector('[data-list="active"]');
const endOthers = document.querySelector('[data-action="end-others"]');
const template = document.getElementById("session-item");

/**
 * How a session signed in, from its amr (RFC 8176), second_factor and auth_time:
 * "Signed in with password", "… password and an authenticator code", "… password and a
 * recovery code", "… a passkey"; a later re-authentication is said too.
 */
function signInMethod(session) {
  const amr = session.amr || [];
  let how;
  if (amr.includes("hwk") || amr.includes("swk")) {
    how = amr.includes("pwd") ? "password and a passkey" : "a passkey";
  } else if (amr.includes("otp")) {
    const code = session.second_factor === "recovery" ? "a recovery code"
      : session.second_factor === "totp" ? "an authenticator code" : "a one-time code";
    how = amr.includes("pwd") ? `password and ${code}` : code;
  } else if (amr.includes("pwd")) {
    how = "password";
  } else {
    return "";
  }
  const text = `Signed in with ${how}`;
  const later = session.auth_time && session.auth_time !== session.created_at;
  return later ? `${text} · confirmed again ${formatRelative(session.auth_time)}` : text;
}

function sessionItem(session) {
  const item = template.content.firstElementChild.cloneNode(true);
  const slot = (name) => item.querySelector(`[data-slot="${name}"]`);
  const device = describeDevice(session.user_agent);
  item.dataset.sessionId = session.id;
  item.classList.toggle("session--phone", device.phone);
  slot("device").textContent = device.name;
  if (!session.current) slot("current").remove();
  const where = session.ip ? `${session.ip} · ` : "";
  slot("meta").textContent = `${where}signed in ${formatDate(session.created_at)} · `
    + (session.current ? "active now" : `last active ${formatRelative(session.last_used_at)}`);
  slot("method").textContent = signInMethod(session);
  if (!session.current) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button button--danger-outline button--small";
    button.textContent = "End session";
    button.dataset.busyLabel = "Ending…";
    button.setAttribute("aria-label", `End session: ${device.name}, signed in ${formatDate(session.created_at)}`);
    button.addEventListener("click", () => endOne(button, session.id));
    slot("action").append(button);
  }
  return item;
}

function endedItem(ended, signIn) {
  const item = template.content.firstElementChild.cloneNode(true);
  const slot = (name) => item.querySelector(`[data-slot="${name}"]`);
  const device = signIn ? describeDevice(signIn.user_agent) : null;
  item.classList.toggle("session--phone", Boolean(device && device.phone));
  slot("device").textContent = device ? device.name : "Unknown device";
  slot("current").remove();
  const where = signIn && signIn.ip ? `${signIn.ip} · ` : "";
  const reason = ENDED_REASONS[ended.reason] || "Ended";
  slot("meta").textContent = `${where}${reason} ${formatRelative(ended.ended_at)} · ${formatDate(ended.ended_at)}`;
  return item;
}

/** Each session's sign-in event: the device and address it was opened from. */
async function signIns() {
  const bySession = new Map();
  try {
    for (const event of await api("GET", "/auth/events")) {
      if (event.kind === "login.succeeded" && event.session_id && !bySession.has(event.session_id)) {
        bySession.set(event.session_id, event);
      }
    }
  } catch (_) {
    // without the events the list still says when and why
  }
  return bySession;
}

async function loadEnded() {
  let ended;
  try {
    ended = await api("GET", "/auth/sessions/ended");
  } catch (_) {
    return; // a nicety: the active list is what matters
  }
  const shown = ended.slice(0, 5);
  const opened = shown.length ? await signIns() : new Map();
  const section = document.querySelector("[data-ended]");
  document.querySelector('[data-list="ended"]')
    .replaceChildren(...shown.map((row) => endedItem(row, opened.get(row.id))));
  section.hidden = ended.length === 0;
}

async function load() {
  let sessions;
  try {
    sessions = await api("GET", "/auth/sessions");
  } catch (problem) {
    showProblem(problem);
    return;
  }
  sessions.sort((a, b) => Number(b.current) - Number(a.current));
  activeList.replaceChildren(...sessions.map(sessionItem));
  document.querySelector('[data-bind="count"]').textContent = `(${sessions.length})`;
  document.querySelector('[data-bind="loading"]').hidden = true;
  endOthers.hidden = false;
  endOthers.disabled = sessions.length < 2;
  panel.setAttribute("aria-busy", "false");
  await loadEnded();
}

async function endOne(button, id) {
  // The button leaves the page with its session: focus goes to the next session's button
  // (or the list's heading), not to the top of the page.
  const buttons = [...activeList.querySelectorAll(".session__action button")];
  const position = buttons.indexOf(button);
  await withBusy(button, async () => {
    try {
      await api("DELETE", `/auth/sessions/${encodeURIComponent(id)}`);
      showNotice("ended-one");
    } catch (problem) {
      showProblem(problem);
    }
  });
  await load();
  const remaining = [...activeList.querySelectorAll(".session__action button")];
  const next = remaining[Math.min(position, remaining.length - 1)];
  (next || document.getElementById("active-title")).focus();
}

endOthers.addEventListener("click", async () => {
  await withBusy(endOthers, async () => {
    try {
      await api("POST", "/auth/logout-all", { keep_current: true });
      showNotice("ended-others");
    } catch (problem) {
      showProblem(problem);
    }
  });
  await load(); // after withBusy, which re-enables the button: load decides
});

load();
