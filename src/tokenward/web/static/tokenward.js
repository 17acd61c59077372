/*! Tokenward browser client. No dependencies, no build step. Guide: docs/browser.md
 *
 *   <script src="/static/tokenward.js" defer></script>
 *   const me = await Tokenward.api("GET", "/auth/me");
 *
 * What it does for every same-origin call:
 *   - sends the session cookies (credentials: "same-origin") and, on unsafe methods,
 *     the X-CSRF-Token header copied from the readable CSRF cookie;
 *   - when the access token has expired, refreshes once (POST /auth/refresh) and retries.
 *     All calls of a tab share one refresh in flight, however many fail at the same time;
 *   - when the session is over (refresh refused), sends the browser to the sign-in page
 *     with ?reason=… and rejects the call with a Tokenward.Problem (loginRequired: true);
 *   - when a route needs a second factor or a recent sign-in (403 mfa-required or
 *     reauthentication-required) and an onStepUp hook is configured, asks it for the
 *     password or a code, POSTs /auth/reauthenticate and sends the request once more.
 */
(function () {
  "use strict";

  const PROBLEM_PREFIX = "urn:tokenward:problem:";
  // __Host- when cookies are Secure (the default), the bare name on plain-http test setups.
  const CSRF_COOKIES = ["__Host-csrf_token", "csrf_token"];
  const SAFE_METHODS = ["GET", "HEAD", "OPTIONS"];

  const config = {
    prefix: "", // where Tokenward's routes are mounted on this origin
    loginUrl: "/login",
    onLoginRequired: null, // (reason) => void; default: go to loginUrl
    // async (need, problem, failure) => ({password?, code?}) | null: answer a step-up.
    // need: "mfa-required" or "reauthentication-required"; failure: the Problem of the
    // previous answer when it was refused (a wrong code), else null. null gives up.
    onStepUp: null,
  };
  const STEP_UPS = ["mfa-required", "reauthentication-required"];
  const STEP_UP_TRIES = 3;
  let refreshing = null; // the refresh in flight in this tab, shared by every caller
  let generation = 0; // counts successful refreshes: a call sent before one needs no other
  let leaving = false;

  /** An RFC 9457 problem answered by the server, as an Error. */
  class Problem extends Error {
    constructor(status, body, retryAfter) {
      super(body.detail || body.title || "HTTP " + status);
      this.name = "TokenwardProblem";
      this.status = status;
      this.type = typeof body.type === "string" ? body.type : "about:blank";
      this.slug = this.type.startsWith(PROBLEM_PREFIX)
        ? this.type.slice(PROBLEM_PREFIX.length)
        : status === 401 ? "unauthenticated" : "error";
      this.title = body.title || "";
      this.detail = body.detail || "";
      this.rule = body.rule || null; // which password or input rule failed (422)
      this.retryAfter = retryAfter; // seconds, from Retry-After (429, 503)
      this.loginRequired = false; // true: the browser is on its way to the sign-in page
    }

    static async from(response) {
      let body = {};
      try {
        body = await response.clone().json();
      } catch (_) {
        // not JSON (a proxy's error page, say): status alone then
      }
      const retryAfter = parseInt(response.headers.get("Retry-After") || "", 10);
      return new Problem(response.status, body || {}, Number.isFinite(retryAfter) ? retryAfter : null);
    }
  }

  /** The anti-CSRF token from its readable cookie, or null when there is no session. */
  function csrfToken() {
    const jar = document.cookie ? document.cookie.split("; ") : [];
    for (const name of CSRF_COOKIES) {
      const row = jar.find((cookie) => cookie.startsWith(name + "="));
      if (row) return decodeURIComponent(row.slice(name.length + 1));
    }
    return null;
  }

  function isSessionEndpoint(url) {
    // Their 401s mean "wrong password" or "no session", never "refresh and retry".
    const path = url.pathname.slice(config.prefix.length);
    return url.pathname.startsWith(config.prefix)
      && ["/auth/login", "/auth/register", "/auth/refresh", "/auth/login/mfa",
        "/auth/login/mfa/enroll"].includes(path);
  }

  /**
   * POST /auth/reauthenticate with {password} and/or {code}: the session's auth_time
   * becomes now (and a code makes it a multi-factor session). Rejects with a Problem.
   */
  async function reauthenticate(credentials) {
    const response = await tokenwardFetch(config.prefix + "/auth/reauthenticate", {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(credentials),
    });
    if (!response.ok) throw await Problem.from(response);
  }

  /** A 403 asking for a step-up, answered through config.onStepUp; true: retry. */
  async function steppedUp(response) {
    const problem = await Problem.from(response);
    if (!STEP_UPS.includes(problem.slug)) return false;
    let failure = null;
    for (let attempt = 0; attempt < STEP_UP_TRIES; attempt += 1) {
      const credentials = await config.onStepUp(problem.slug, problem, failure);
      if (!credentials) return false;
      try {
        await reauthenticate(credentials);
        return true;
      } catch (refused) {
        if (!(refused instanceof Problem) || refused.loginRequired) throw refused;
        failure = refused; // a wrong password or code: ask again, saying so
      }
    }
    return false;
  }

  /** Rotate the refresh token: one request per tab, shared by every concurrent caller. */
  function refresh() {
    if (!refreshing) {
      refreshing = (async () => {
        try {
          const headers = {};
          const token = csrfToken();
          if (token) headers["X-CSRF-Token"] = token;
          const response = await fetch(config.prefix + "/auth/refresh", {
            method: "POST",
            credentials: "same-origin",
            headers,
          });
          if (!response.ok) throw await Problem.from(response);
          generation += 1;
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  }

  function loginRequired(problem, hadSession) {
    // Throttling (429) or an outage (503) during a refresh is not the end of the session.
    if (problem.status !== 401 && problem.slug !== "csrf") throw problem;
    const reason = problem.slug === "refresh-reused" ? "refresh-reused"
      : hadSession ? "session-ended" : "unauthenticated";
    problem.loginRequired = true;
    if (config.onLoginRequired) {
      config.onLoginRequired(reason, problem);
    } else if (!leaving && location.pathname !== config.loginUrl) {
      leaving = true; // many calls may fail at once: navigate once
      const next = encodeURIComponent(location.pathname + location.search);
      location.assign(config.loginUrl + "?reason=" + reason + "&next=" + next);
    }
    throw problem;
  }

  /**
   * fetch() for your own origin's APIs and Tokenward's. Resolves with the Response like
   * fetch (4xx and 5xx included); rejects with a Problem (loginRequired: true) only when
   * the user has to sign in again. Other origins get a plain fetch: no cookie, no token.
   * A retried request is sent twice, so pass a body that can be (a string, Blob, FormData).
   */
  async function tokenwardFetch(input, init = {}) {
    if (input instanceof Request) throw new TypeError("Tokenward.fetch takes a URL, not a Request");
    const url = new URL(String(input), location.href);
    if (url.origin !== location.origin) return fetch(input, init);
    const method = (init.method || "GET").toUpperCase();
    const send = () => {
      const headers = new Headers(init.headers || {});
      const token = csrfToken();
      if (!SAFE_METHODS.includes(method) && token && !headers.has("X-CSRF-Token")) {
        headers.set("X-CSRF-Token", token);
      }
      return fetch(url, { ...init, method, headers, credentials: "same-origin" });
    };

    const sentAt = generation;
    // Read before sending: a refused refresh of a concurrent call may clear the cookies.
    const hadSession = csrfToken() !== null;
    let response = await send();
    if (response.status === 403 && config.onStepUp && !init.tokenwardStepUp
        && url.pathname !== config.prefix + "/auth/reauthenticate"
        && await steppedUp(response)) {
      return tokenwardFetch(input, { ...init, tokenwardStepUp: true }); // once
    }
    if (response.status !== 401 || isSessionEndpoint(url)) return response;

    const problem = await Problem.from(response);
    // The browser drops the access cookie at its Max-Age (the access TTL), so an expired
    // token usually arrives as no token at all: "unauthenticated" while the CSRF cookie,
    // which lives as long as the refresh cookie, says a session may still be there.
    const worthRefreshing = problem.slug === "token-expired"
      || (problem.slug === "unauthenticated" && hadSession);
    // A wrong password typed to confirm a change (the e-mail change answers 401) is the
    // caller's to explain; the session is fine.
    if (problem.slug === "invalid-credentials") return response;
    if (!worthRefreshing) return loginRequired(problem, hadSession);
    if (sentAt === generation) {
      try {
        await refresh();
      } catch (failure) {
        if (failure instanceof Problem) return loginRequired(failure, hadSession);
        throw failure; // the network is down: let the caller say so
      }
    } // else: another call refreshed while this one was in flight; just retry.

    response = await send();
    if (response.status === 401) return loginRequired(await Problem.from(response), hadSession);
    return response;
  }

  /**
   * JSON in, JSON out. Resolves with the parsed body (null for 204); rejects with a
   * Problem for any error status.
   */
  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await tokenwardFetch(path, init);
    if (!response.ok) throw await Problem.from(response);
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    return type.includes("json") ? response.json() : response.text();
  }

  /** End this session (or, with {everywhere: true}, every session of the user). */
  async function logout({ everywhere = false } = {}) {
    const path = everywhere ? "/auth/logout-all" : "/auth/logout";
    await api("POST", config.prefix + path);
  }

  /** Change settings: {prefix, loginUrl, onLoginRequired(reason, problem), onStepUp}. */
  function configure(options) {
    for (const key of Object.keys(options)) {
      if (!(key in config)) throw new TypeError("Tokenward.configure: unknown option " + key);
      config[key] = options[key];
    }
  }

  window.Tokenward = Object.freeze({
    fetch: tokenwardFetch,
    api,
    refresh,
    reauthenticate,
    logout,
    csrfToken,
    configure,
    Problem,
  });
})();
