// The forgotten-password page: asks the API to mail a reset link. The answer is the same
// whether or not an account uses the address (202), so the page says "if".
import { postJSON, showNotice, showProblem, withBusy } from "./ui.js";

const form = document.querySelector('[data-form="forgot"]');
const { email } = form.elements;

form.addEventListener("submit", (event) => {
  event.preventDefault();
  withBusy(form.querySelector('[type="submit"]'), async () => {
    try {
      await postJSON("/auth/password/forgot", { email: email.value });
    } catch (problem) {
      showProblem(problem);
      email.focus();
      return;
    }
    showNotice("sent");
  });
});
