// Helpers shared by Tokenward's own pages. The API client itself is window.Tokenward
// (tokenward.js, a deferred classic script that runs before these modules).

/** Hide every notice on the page. */
export function clearNotices() {
  for (const notice of document.querySelectorAll("[data-notice]")) notice.hidden = true;
}

/**
 * Reveal the notice `slug`: in `scope` when it has one (written "<scope name>-<slug>",
 * the server reveals the same notice after a plain form post), else in the page's main
 * notices, else the generic "error" notice. `fields` fill its [data-field] slots (as text).
 */
export function showNotice(slug, fields = {}, scope = null) {
  clearNotices();
  const page = document.querySelector("[data-notices]");
  const pick = (root, name) => root && root.querySelector(`[data-notice="${name}"]`);
  const own = scope ? `${scope.dataset.notices}-${slug}` : slug;
  const notice = pick(scope, own) || pick(page, slug) || pick(page, "error");
  for (const [name, value] of Object.entries(fields)) {
    const slot = notice.querySelector(`[data-field="${name}"]`);
    if (slot && value) slot.textContent = value;
  }
  notice.hidden = false;
  notice.scrollIntoView({ block: "nearest" });
  return notice;
}

/** Explain a failed call: a Tokenward.Problem, or a network failure (a TypeError). */
export function showProblem(problem, scope = null) {
  if (problem && problem.loginRequired) return; // the browser is on its way to sign in
  if (!(problem instanceof window.Tokenward.Problem)) {
    showNotice("network", {}, scope);
    return;
  }
  const fields = {};
  if (problem.retryAfter) fields.retry = duration(problem.retryAfter);
  if (problem.slug === "validation" && problem.detail) fields.detail = sentence(problem.detail);
  showNotice(problem.slug, fields, scope);
}

/** Run `task` with `button` disabled and showing its data-busy-label. */
export async function withBusy(button, task) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  if (button.dataset.busyLabel) button.textContent = button.dataset.busyLabel;
  try {
    return await task();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = label;
  }
}

/** The "Show" buttons next to password fields. */
export function passwordToggles() {
  for (const button of document.querySelectorAll("[data-reveal]")) {
    const input = document.getElementById(button.dataset.reveal);
    button.addEventListener("click", () => {
      const show = input.type === "password";
      input.type = show ? "text" : "password";
      button.textContent = show ? "Hide" : "Show";
      button.setAttribute("aria-pressed", String(show));
    });
  }
}

/**
 * The sign-out form of the account pages. Without scripts it posts to /account/sign-out
 * with the CSRF token the server wrote into it; with them, the call uses the current
 * cookie (a password change in this tab gave the session a new one).
 */
export function wireLogout() {
  const form = document.querySelector('[data-form="sign-out"]');
  const button = form.querySelector('[type="submit"]');
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    withBusy(button, async () => {
      try {
        await window.Tokenward.logout();
      } catch (problem) {
        showProblem(problem);
        return;
      }
      location.assign("/login?reason=signed-out");
    });
  });
}

/**
 * POST a JSON body from a page whose address held a token: the request carries no
 * Referer beyond this origin's bare path (the token is already gone from the address bar).
 * Resolves with the parsed body (null for 204); rejects with a Tokenward.Problem.
 */
export async function postJSON(path, body) {
  const response = await window.Tokenward.fetch(path, {
    method: "POST",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(body),
    // The page is served with Referrer-Policy: no-referrer, under which a POST says
    // "Origin: null" and the API's Origin check refuses it; this request may name its
    // origin (the address holds no token any more).
    referrerPolicy: "same-origin",
  });
  if (!response.ok) throw await window.Tokenward.Problem.from(response);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : null;
}

/** A local path to go to after signing in: `next` when it is one of ours, else /account. */
export function safeNext(next) {
  if (!next || !next.startsWith("/")) return "/account";
  const url = new URL(next, location.origin); // "//evil.example" and "/\evil" leave the origin
  return url.origin === location.origin ? url.pathname + url.search : "/account";
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

/** "29 Nov 2026, 09:00" in the reader's locale and time zone. */
export function formatDate(iso) {
  return dateFormat.format(new Date(iso));
}

/** "just now", "5 minutes ago", "yesterday". */
export function formatRelative(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  if (Math.abs(seconds) < 45) return "just now";
  const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === "minute") {
      return relativeFormat.format(Math.round(seconds / size), unit);
    }
  }
  return "just now";
}

/** "30 seconds", "1 minute", "15 minutes". */
export function duration(seconds) {
  if (seconds < 60) return seconds === 1 ? "1 second" : `${seconds} seconds`;
  const minutes = Math.ceil(seconds / 60);
  return minutes === 1 ? "1 minute" : `${minutes} minutes`;
}

function sentence(text) {
  const trimmed = text.trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : capital + ".";
}

/** A readable name for a session's User-Agent: "Chrome on Linux", "Safari on iOS". */
export function describeDevice(userAgent) {
  const ua = userAgent || "";
  const browser = [
    [/Edg(e|A|iOS)?\//, "Edge"], [/OPR\//, "Opera"], [/Firefox\/|FxiOS\//, "Firefox"],
    [/Chrome\/|CriOS\//, "Chrome"], [/Safari\//, "Safari"],
  ].find(([pattern]) => pattern.test(ua));
  const system = [
    [/iPhone|iPad|iPod/, "iOS"], [/Android/, "Android"], [/Windows/, "Windows"],
    [/CrOS/, "ChromeOS"], [/Mac OS X|Macintosh/, "macOS"], [/Linux/, "Linux"],
  ].find(([pattern]) => pattern.test(ua));
  const phone = /iPhone|Android.*Mobile|Mobile Safari/.test(ua);
  let name;
  if (browser && system) name = `${browser[1]} on ${system[1]}`;
  else if (browser || system) name = (browser || system)[1];
  else name = ua ? ua.slice(0, 60) : "Unknown device"; // an API client: show what it says
  return { name, phone };
}

/** An SVG document from the server (the QR code), as a node of this page. */
export function svgNode(text) {
  const parsed = new DOMParser().parseFromString(text, "image/svg+xml");
  const svg = document.importNode(parsed.documentElement, true);
  svg.setAttribute("aria-hidden", "true");
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  return svg;
}
