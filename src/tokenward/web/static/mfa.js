// The second step of a sign-in (/login/mfa). Without JavaScript the forms post to
// /auth/login/mfa with the challenge the server wrote into them (from the cookie a form
// sign-in set) and the API answers 303. With it, the challenge comes from the address's
// fragment (#challenge=…&enroll=1, put there by the sign-in page), is kept in this tab's
// sessionStorage and taken out of the address, and the code goes as JSON, so a wrong code
// is explained in place and the challenge kept; a challenge that is gone (expired, used,
// too many wrong codes) sends the browser back to /login with a message.
import { cancelled, credentialJSON, requestOptions, supported } from "./passkeys.js";
import { clearNotices, safeNext, showNotice, showProblem, svgNode, withBusy } from "./ui.js";

const KEPT = "tokenward:mfa-challenge";
const fragment = new URLSearchParams(location.hash.slice(1));
const query = new URLSearchParams(location.search);
if (fragment.get("challenge")) {
  sessionStorage.setItem(KEPT, JSON.stringify({
    challenge: fragment.get("challenge"),
    enroll: fragment.get("enroll") === "1",
    // Listed only when the user has a passkey: then the page offers it.
    factors: (fragment.get("factors") || "").split(",").filter(Boolean),
  }));
  // Out of the address bar and the history: it is single-use anyway.
  history.replaceState(null, "", location.pathname + location.search);
}
const kept = JSON.parse(sessionStorage.getItem(KEPT) || "null");
const written = document.querySelector('[name="challenge"]').value;
const challenge = (kept && kept.challenge) || written;
// Without a fragment, the server's notice tells an enrolment challenge (its cookie is HttpOnly).
const plainEnrol = document.querySelector('[data-notice="enroll-needs-script"]:not([hidden])');
const enroll = kept ? kept.enroll : Boolean(plainEnrol);
const next = safeNext(query.get("next"));
const factors = (kept && kept.factors) || [];
const passkey = supported && factors.includes("passkey");

const section = (name) => document.querySelector(`[data-section="${name}"]`);

function show(name) {
  for (const other of ["code", "recovery", "passkey", "enroll", "codes"]) {
    section(other).hidden = other !== name;
  }
}

function gone(problem) {
  // The challenge cannot be used any more: the sign-in starts again.
  sessionStorage.removeItem(KEPT);
  location.assign(`/login?error=${encodeURIComponent(problem.slug)}`);
}

async function redeem(input) {
  let answer;
  try {
    answer = await window.Tokenward.api("POST", "/auth/login/mfa", {
      challenge, code: input.value.trim(),
    });
  } catch (problem) {
    if (problem instanceof window.Tokenward.Problem && problem.slug === "mfa-challenge-invalid") {
      gone(problem);
      return null;
    }
    input.value = "";
    showProblem(problem);
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return null;
  }
  sessionStorage.removeItem(KEPT);
  return answer;
}

function wire(name, after) {
  const form = document.querySelector(`[data-form="${name}"]`);
  const input = form.elements.code;
  input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    withBusy(form.querySelector('[type="submit"]'), async () => {
      const answer = await redeem(input);
      if (answer) after(answer);
    });
  });
}

const onwards = () => location.assign(next);
wire("code", onwards);
wire("recovery", onwards);
wire("enroll", (answer) => {
  // The factor is on and the session open: the ten recovery codes, this once.
  const list = document.querySelector('[data-bind="codes"]');
  list.replaceChildren(...(answer.recovery_codes || []).map((code) => {
    const item = document.createElement("li");
    const text = document.createElement("code");
    text.textContent = code;
    item.append(text);
    return item;
  }));
  clearNotices();
  show("codes");
  document.getElementById("codes-title").focus();
});
document.querySelector('[data-action="saved"]').addEventListener("click", onwards);

const switches = [
  ["use-recovery", "recovery", "recovery-code"],
  ["use-code", "code", "code"],
  ["use-passkey", "passkey", null],
];
for (const [action, target, field] of switches) {
  for (const link of document.querySelectorAll(`[data-action="${action}"]`)) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      clearNotices();
      show(target);
      const focus = field ? document.getElementById(field) : section(target).querySelector("button");
      focus.focus();
    });
  }
}

// A passkey as the second step: options for this challenge (its user's passkeys), the
// browser's assertion, then the same POST /auth/login/mfa with `credential` for `code`.
const passkeyButton = document.querySelector('[data-action="passkey-step"]');
passkeyButton.addEventListener("click", () => withBusy(passkeyButton, async () => {
  clearNotices();
  let assertion;
  try {
    const options = await window.Tokenward.api("POST", "/auth/login/mfa/passkey/options", {
      challenge,
    });
    assertion = await navigator.credentials.get({ publicKey: requestOptions(options.publicKey) });
  } catch (error) {
    if (error instanceof window.Tokenward.Problem && error.slug === "mfa-challenge-invalid") {
      gone(error);
    } else if (cancelled(error)) {
      showNotice("passkey-cancelled");
    } else {
      showProblem(error);
    }
    return;
  }
  try {
    await window.Tokenward.api("POST", "/auth/login/mfa", {
      challenge, credential: credentialJSON(assertion),
    });
  } catch (problem) {
    if (problem instanceof window.Tokenward.Problem && problem.slug === "mfa-challenge-invalid") {
      gone(problem);
    } else {
      showProblem(problem);
    }
    return;
  }
  sessionStorage.removeItem(KEPT);
  onwards();
}));

async function startEnrolment() {
  show("enroll");
  let secret;
  try {
    secret = await window.Tokenward.api("POST", "/auth/login/mfa/enroll", { challenge });
  } catch (problem) {
    if (problem instanceof window.Tokenward.Problem && problem.slug === "mfa-challenge-invalid") {
      gone(problem);
      return;
    }
    showProblem(problem);
    return;
  }
  document.querySelector('[data-bind="qr"]').replaceChildren(svgNode(secret.qr_svg));
  document.querySelector('[data-bind="secret"]').textContent = secret.secret;
  document.getElementById("enroll-code").focus();
}

if (!challenge) {
  show("code");
  showNotice("missing");
} else {
  // A notice the server revealed for the plain page is not this page's any more.
  if (plainEnrol) plainEnrol.hidden = true;
  for (const input of document.querySelectorAll('[name="challenge"]')) input.value = challenge;
  if (passkey) {
    // Offered: first when the user has no authenticator app, else as the other way.
    document.querySelector("[data-passkey-step]").hidden = false;
    document.querySelector("[data-code-switch]").hidden = !factors.includes("totp");
  }
  if (enroll) {
    startEnrolment();
  } else if (passkey && !factors.includes("totp")) {
    show("passkey");
    passkeyButton.focus();
  } else if (section("code").hidden) {
    document.getElementById("recovery-code").focus();
  } else {
    document.getElementById("code").focus();
  }
}
