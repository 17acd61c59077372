// The profile page: who is signed in (GET /auth/me, a protected call), whether the address
// is verified, how many devices, and the change-password and change-email forms. Without
// JavaScript the two forms post to /account/password and /account/email instead.
import {
  formatDate, showNotice, showProblem, wireLogout, withBusy,
} from "./ui.js";
import "./security.js"; // the two-step verification section and the step-up prompt

const api = (...args) => window.Tokenward.api(...args);

wireLogout();

function bind(name, text) {
  for (const element of document.querySelectorAll(`[data-bind="${name}"]`)) {
    element.textContent = text;
  }
}

async function load() {
  const profile = document.querySelector("[data-profile]");
  try {
    const [me, sessions] = await Promise.all([api("GET", "/auth/me"), api("GET", "/auth/sessions")]);
    bind("email", me.email);
    bind("created_at", formatDate(me.created_at));
    bind("id", me.id);
    if (typeof me.email_verified === "boolean") {
      bind("email_verified", me.email_verified ? "Yes" : "Not yet");
      resend.hidden = me.email_verified;
    } else {
      bind("email_verified", "—");
    }
    for (const input of document.querySelectorAll('[data-bind-value="email"]')) input.value = me.email;
    const others = sessions.length - 1;
    bind("session-summary", others === 0
      ? "You are signed in on this device only."
      : `You are signed in on this device and ${others} other${others === 1 ? "" : "s"}.`);
    profile.setAttribute("aria-busy", "false");
  } catch (problem) {
    showProblem(problem);
  }
}

const resend = document.querySelector('[data-action="resend-verification"]');
resend.addEventListener("click", () => withBusy(resend, async () => {
  try {
    await api("POST", "/auth/email/verify/resend", {});
  } catch (problem) {
    showProblem(problem);
    return;
  }
  showNotice("verification-sent");
}));

const passwordForm = document.querySelector('[data-form="password"]');
const passwordNotices = document.querySelector('[data-notices="password"]');
passwordForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const { current_password: current, new_password: fresh } = passwordForm.elements;
  withBusy(passwordForm.querySelector('[type="submit"]'), async () => {
    try {
      await api("POST", "/auth/password", {
        current_password: current.value,
        new_password: fresh.value,
      });
    } catch (problem) {
      showProblem(problem, passwordNotices);
      (problem.slug === "invalid-credentials" ? current : fresh).focus();
      return;
    }
    passwordForm.reset();
    showNotice("password-changed");
    load();
  });
});

const emailForm = document.querySelector('[data-form="email"]');
const emailNotices = document.querySelector('[data-notices="email"]');
emailForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const { new_email: newEmail, password } = emailForm.elements;
  withBusy(emailForm.querySelector('[type="submit"]'), async () => {
    newEmail.removeAttribute("aria-invalid");
    try {
      await api("POST", "/auth/email/change", {
        new_email: newEmail.value,
        password: password.value,
      });
    } catch (problem) {
      showProblem(problem, emailNotices);
      const field = problem.slug === "invalid-credentials" ? password : newEmail;
      if (field === newEmail) newEmail.setAttribute("aria-invalid", "true");
      field.focus();
      return;
    }
    const sent = showNotice("email-change-sent", { "new-email": newEmail.value });
    emailForm.reset();
    sent.setAttribute("tabindex", "-1");
    sent.focus();
  });
});

load();
