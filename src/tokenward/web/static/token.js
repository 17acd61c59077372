// The pages opened from a link in a mail: reset the password, verify the address, confirm
// a new address. The token came in the address (?token=…); the server wrote it into the
// form, so it is taken out of the address bar at once: it does not stay in the history,
// and nothing copied from the address bar (a shared screen, a bug report) carries it.
// Without JavaScript the form posts to this same path and the server answers.
import { passwordToggles, postJSON, showNotice, showProblem, withBusy } from "./ui.js";

if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(history.state, "", location.pathname);
}

passwordToggles();

const form = document.querySelector('[data-form="token"]');
const password = form.elements.new_password || null;

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const button = form.querySelector('[type="submit"]');
  withBusy(button, async () => {
    const body = { token: form.elements.token.value };
    if (password) {
      body.new_password = password.value;
      password.removeAttribute("aria-invalid");
    }
    try {
      await postJSON(form.dataset.api, body);
    } catch (problem) {
      showProblem(problem);
      if (problem.slug === "validation" && password) {
        password.setAttribute("aria-invalid", "true");
        password.focus();
      }
      if (problem.slug === "token-invalid") form.hidden = true;
      return;
    }
    if (form.dataset.done) {
      location.assign(form.dataset.done);
      return;
    }
    form.hidden = true;
    const notice = showNotice("done");
    notice.setAttribute("tabindex", "-1");
    notice.focus();
  });
});
