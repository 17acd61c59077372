// The sign-in page. Without JavaScript the form posts to /auth/login and the server
// answers 303 to /account or back here with ?error=<slug>; with it, the same form is sent
// as JSON so a failure is explained without a reload and the typed email is kept.
import {
  passwordToggles, postJSON, safeNext, showNotice, showProblem, withBusy,
} from "./ui.js";

const REMEMBERED_EMAIL = "tokenward:registered-email";

passwordToggles();

const form = document.querySelector('[data-form="login"]');
const { email, password } = form.elements;

// Just registered in this tab: the email is known, the password is next.
const remembered = sessionStorage.getItem(REMEMBERED_EMAIL);
sessionStorage.removeItem(REMEMBERED_EMAIL);
if (remembered && !email.value) {
  email.value = remembered;
  password.focus();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const button = form.querySelector('[type="submit"]');
  withBusy(button, async () => {
    let answer;
    try {
      answer = await window.Tokenward.api("POST", "/auth/login", {
        email: email.value,
        password: password.value,
      });
    } catch (problem) {
      password.value = "";
      showProblem(problem);
      password.focus();
      return;
    }
    const next = safeNext(new URLSearchParams(location.search).get("next"));
    if (answer && answer.mfa_required) {
      // The second step: the challenge goes in the fragment, which never reaches a server.
      const fragment = new URLSearchParams({ challenge: answer.challenge });
      if (answer.enrollment_required) fragment.set("enroll", "1");
      if ((answer.factors || []).includes("passkey")) fragment.set("factors", answer.factors.join(","));
      location.assign(`/login/mfa?next=${encodeURIComponent(next)}#${fragment}`);
      return;
    }
    location.assign(next);
  });
});

// An address not verified yet (TOKENWARD_REQUIRE_VERIFIED_EMAIL): ask for a new link for
// the address typed. The answer is the same whether or not it needed one.
const resend = document.querySelector('[data-form="resend"]');
resend.addEventListener("submit", (event) => {
  event.preventDefault();
  withBusy(resend.querySelector('[type="submit"]'), async () => {
    try {
      await postJSON("/auth/email/verify/resend", { email: email.value });
    } catch (problem) {
      showProblem(problem);
      return;
    }
    showNotice("verification-sent");
  });
});
