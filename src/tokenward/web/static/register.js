// The registration page. Without JavaScript the form posts to /auth/register and the
// server answers 303 to /login?registered=1 or back here with ?error=<slug>; with it, the
// API's own explanation of a refused password (which rule failed) is shown in place.
import { passwordToggles, showProblem, withBusy } from "./ui.js";

const REMEMBERED_EMAIL = "tokenward:registered-email";

passwordToggles();

const form = document.querySelector('[data-form="register"]');
const { email, password } = form.elements;

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const button = form.querySelector('[type="submit"]');
  withBusy(button, async () => {
    email.removeAttribute("aria-invalid");
    password.removeAttribute("aria-invalid");
    try {
      await window.Tokenward.api("POST", "/auth/register", {
        email: email.value,
        password: password.value,
      });
    } catch (problem) {
      showProblem(problem);
      const field = problem.rule === "email" || problem.slug === "conflict" ? email : password;
      if (problem.slug === "validation" || problem.slug === "conflict") {
        field.setAttribute("aria-invalid", "true");
        field.focus();
      }
      return;
    }
    sessionStorage.setItem(REMEMBERED_EMAIL, email.value);
    location.assign("/login?registered=1");
  });
});
