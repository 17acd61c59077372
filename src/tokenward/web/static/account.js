// The profile page: who is signed in (GET /auth/me, a protected call), how many devices,
// and the change-password form.
import {
  formatDate, showNotice, showProblem, wireLogout, withBusy,
} from "./ui.js";

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

load();
