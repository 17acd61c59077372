// The account page's "Two-step verification" section: set up an authenticator app (QR code
// and key, confirmed by a first code), its ten recovery codes shown once, new codes, removal.
// Changing factors needs a recent sign-in (and, once a factor is on, a recent code): the
// API answers 403 reauthentication-required or mfa-required, and the Tokenward client's
// onStepUp hook asks for the password or a code here, re-authenticates and retries.
import { clearNotices, formatDate, showNotice, showProblem, svgNode, withBusy } from "./ui.js";

const api = (...args) => window.Tokenward.api(...args);
const panel = document.querySelector("[data-mfa]");
const notices = document.querySelector('[data-notices="mfa"]');
const dialog = document.querySelector("[data-step-up]");
const stepUpForm = dialog.querySelector("form");
const STEP_UPS = ["mfa-required", "reauthentication-required"];
let hasFactor = false;

const bind = (name) => panel.querySelector(`[data-bind="${name}"]`);
const action = (name) => panel.querySelector(`[data-action="${name}"]`);

function state(name) {
  for (const part of panel.querySelectorAll("[data-mfa-state]")) {
    part.hidden = part.dataset.mfaState !== name;
  }
}

function explain(problem) {
  // A step-up the user cancelled is no error to announce.
  if (problem instanceof window.Tokenward.Problem && STEP_UPS.includes(problem.slug)) return;
  showProblem(problem, notices);
}

// ---------------------------------------------------------------- the step-up prompt

const FAILURES = {
  "invalid-code": "That code isn’t right, or it was already used. Try the code your app shows now.",
  "invalid-credentials": "That password is not correct.",
  "rate-limited": "Too many attempts. Please wait a few minutes and try again.",
};

function askStepUp(need, _problem, failure) {
  const kind = need === "mfa-required" || hasFactor ? "code" : "password";
  for (const field of dialog.querySelectorAll("[data-step-up-field]")) {
    const input = field.querySelector("input");
    field.hidden = field.dataset.stepUpField !== kind;
    input.required = !field.hidden;
    input.value = "";
  }
  const error = dialog.querySelector("[data-step-up-error]");
  error.hidden = !failure;
  if (failure) error.textContent = FAILURES[failure.slug] || failure.detail || "That didn’t work.";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const input = stepUpForm.elements[kind];
      resolve(dialog.returnValue === "ok" && input.value ? { [kind]: input.value.trim() } : null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    stepUpForm.elements[kind].focus();
  });
}

window.Tokenward.configure({ onStepUp: askStepUp });

// ---------------------------------------------------------------------- the section

function showCodes(codes) {
  bind("mfa-codes").replaceChildren(...codes.map((code) => {
    const item = document.createElement("li");
    const text = document.createElement("code");
    text.textContent = code;
    item.append(text);
    return item;
  }));
  state("codes");
  action("mfa-saved").focus();
}

async function load() {
  let status;
  try {
    status = await api("GET", "/auth/mfa");
  } catch (problem) {
    if (problem instanceof window.Tokenward.Problem && problem.status === 404) {
      panel.hidden = true; // TOKENWARD_MFA=off: no second factors here
      return;
    }
    explain(problem);
    return;
  }
  const app = status.factors.find((factor) => factor.kind === "totp");
  hasFactor = Boolean(app);
  if (app) {
    bind("mfa-since").textContent = formatDate(app.created_at);
    const left = status.recovery_codes_left;
    bind("mfa-left").textContent = left === 0 ? "None: make new ones" : String(left);
    state("on");
  } else {
    state("off");
  }
  panel.setAttribute("aria-busy", "false");
}

action("mfa-start").addEventListener("click", () => withBusy(action("mfa-start"), async () => {
  clearNotices();
  let secret;
  try {
    secret = await api("POST", "/auth/mfa/totp/enroll", {});
  } catch (problem) {
    explain(problem);
    return;
  }
  bind("mfa-qr").replaceChildren(svgNode(secret.qr_svg));
  bind("mfa-secret").textContent = secret.secret;
  state("enrol");
  document.getElementById("mfa-code").focus();
}));

action("mfa-cancel").addEventListener("click", () => {
  clearNotices();
  state("off");
  action("mfa-start").focus();
});

const confirmForm = panel.querySelector('[data-form="mfa-confirm"]');
confirmForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = confirmForm.elements.code;
  withBusy(confirmForm.querySelector('[type="submit"]'), async () => {
    let answer;
    try {
      answer = await api("POST", "/auth/mfa/totp/confirm", { code: input.value.trim() });
    } catch (problem) {
      input.value = "";
      explain(problem);
      if (problem.slug === "not-found") state("off");
      else input.focus();
      return;
    }
    confirmForm.reset();
    hasFactor = true;
    showNotice("enabled", {}, notices);
    showCodes(answer.recovery_codes);
  });
});

action("mfa-saved").addEventListener("click", async () => {
  bind("mfa-codes").replaceChildren();
  await load();
  document.getElementById("mfa-title").focus();
});

action("mfa-new-codes").addEventListener("click", () => withBusy(action("mfa-new-codes"), async () => {
  clearNotices();
  let answer;
  try {
    answer = await api("POST", "/auth/mfa/recovery-codes", {});
  } catch (problem) {
    explain(problem);
    return;
  }
  showCodes(answer.recovery_codes);
}));

action("mfa-remove").addEventListener("click", () => withBusy(action("mfa-remove"), async () => {
  clearNotices();
  try {
    await api("DELETE", "/auth/mfa/totp");
  } catch (problem) {
    explain(problem);
    return;
  }
  hasFactor = false;
  await load();
  showNotice("removed", {}, notices);
  action("mfa-start").focus();
}));

load();
