// Passkeys (WebAuthn) on Tokenward's pages: the "Passkeys" section of the account page
// (list, add, rename, remove) and the "Sign in with a passkey" button of the sign-in page; the
// second step of /login/mfa (mfa.js) imports its conversions.
// Progressive enhancement: both start hidden and are shown only when this script runs in
// a browser that has WebAuthn (window.PublicKeyCredential) and the server offers passkeys.
// No library: the base64url <-> ArrayBuffer conversions WebAuthn's JSON needs are below.
import { formatDate, formatRelative, safeNext, showNotice, showProblem, withBusy } from "./ui.js";

export const supported = typeof window.PublicKeyCredential === "function"
  && navigator.credentials && typeof navigator.credentials.create === "function";

// ------------------------------------------------------------------------- base64url

function toBytes(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

function toText(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 1) binary += String.fromCharCode(bytes[i]);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The server's creation options (JSON) as navigator.credentials.create() takes them. */
function creationOptions(json) {
  return {
    ...json,
    challenge: toBytes(json.challenge),
    user: { ...json.user, id: toBytes(json.user.id) },
    excludeCredentials: (json.excludeCredentials || []).map((c) => ({ ...c, id: toBytes(c.id) })),
  };
}

/** The server's request options (JSON) as navigator.credentials.get() takes them. */
export function requestOptions(json) {
  return {
    ...json,
    challenge: toBytes(json.challenge),
    allowCredentials: (json.allowCredentials || []).map((c) => ({ ...c, id: toBytes(c.id) })),
  };
}

/** A PublicKeyCredential in the JSON form the server reads (as toJSON() gives it). */
export function credentialJSON(credential) {
  const r = credential.response;
  const response = { clientDataJSON: toText(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toText(r.attestationObject);
    response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
  } else {
    response.authenticatorData = toText(r.authenticatorData);
    response.signature = toText(r.signature);
    if (r.userHandle) response.userHandle = toText(r.userHandle);
  }
  return {
    id: credential.id,
    rawId: toText(credential.rawId),
    type: credential.type,
    response,
    authenticatorAttachment: credential.authenticatorAttachment || null,
    clientExtensionResults: credential.getClientExtensionResults(),
  };
}

/** The browser refused or the person cancelled (not a server problem). */
export function cancelled(error) {
  return error instanceof DOMException
    && ["NotAllowedError", "AbortError", "InvalidStateError"].includes(error.name);
}

// ------------------------------------------------------------------- the sign-in page

async function postNoSession(path, body) {
  // Not Tokenward.fetch: there is no session to refresh, and a 401 here means "this
  // passkey was refused", which the page explains itself.
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    referrerPolicy: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await window.Tokenward.Problem.from(response);
  return response.json();
}

function wireSignIn(box) {
  const button = box.querySelector('[data-action="passkey-signin"]');
  box.hidden = false;
  button.addEventListener("click", () => withBusy(button, async () => {
    let assertion;
    let options;
    try {
      options = await postNoSession("/auth/login/passkey/options");
      assertion = await navigator.credentials.get({ publicKey: requestOptions(options.publicKey) });
    } catch (error) {
      if (cancelled(error)) showNotice("passkey-cancelled");
      else showProblem(error);
      return;
    }
    try {
      await postNoSession("/auth/login/passkey", {
        handle: options.handle,
        credential: credentialJSON(assertion),
      });
    } catch (problem) {
      showProblem(problem);
      return;
    }
    location.assign(safeNext(new URLSearchParams(location.search).get("next")));
  }));
}

// ------------------------------------------------------------------ the account page

const api = (...args) => window.Tokenward.api(...args);

function wireAccount(section) {
  const list = section.querySelector("[data-passkey-list]");
  const empty = section.querySelector("[data-passkey-empty]");
  const notices = section.querySelector('[data-notices="passkeys"]');
  const form = section.querySelector('[data-form="passkey-add"]');
  let renameForms = 0; // numbers the rename inputs' ids

  function item(passkey) {
    const li = document.createElement("li");
    li.className = "session";
    li.dataset.passkeyId = passkey.id;
    const icon = document.createElement("div");
    icon.className = "session__icon";
    icon.setAttribute("aria-hidden", "true");
    const body = document.createElement("div");
    const name = document.createElement("p");
    name.className = "session__device";
    name.textContent = passkey.name;
    const meta = document.createElement("p");
    meta.className = "session__meta";
    const used = passkey.last_used_at ? `last used ${formatRelative(passkey.last_used_at)}` : "never used";
    meta.textContent = `Added ${formatDate(passkey.created_at)} · ${used}`
      + (passkey.synced ? " · synced" : "");
    body.append(name, meta);
    const action = document.createElement("div");
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "button button--secondary button--small";
    rename.textContent = "Rename";
    rename.setAttribute("aria-label", `Rename passkey: ${passkey.name}`);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "button button--danger-outline button--small";
    remove.textContent = "Remove";
    remove.dataset.busyLabel = "Removing…";
    remove.setAttribute("aria-label", `Remove passkey: ${passkey.name}`);
    remove.addEventListener("click", () => withBusy(remove, async () => {
      try {
        await api("DELETE", `/auth/passkeys/${encodeURIComponent(passkey.id)}`);
      } catch (problem) {
        showProblem(problem, notices);
        return;
      }
      showNotice("removed", {}, notices);
      await load();
    }));
    action.append(rename, " ", remove);
    li.append(icon, body, action);

    // Renaming happens in the row: the name gives way to a labelled input (Enter saves,
    // Escape cancels); a refused name keeps the form open, the old name untouched.
    const editor = renameForm(passkey.name);
    body.insertBefore(editor.form, meta);
    function setName(value) {
      passkey.name = value;
      name.textContent = value;
      rename.setAttribute("aria-label", `Rename passkey: ${value}`);
      remove.setAttribute("aria-label", `Remove passkey: ${value}`);
    }
    function editing(on) {
      editor.form.hidden = !on;
      name.hidden = on;
      action.hidden = on;
      editor.input.removeAttribute("aria-invalid");
      if (on) {
        editor.input.value = passkey.name;
        editor.input.focus();
        editor.input.select();
      } else {
        rename.focus();
      }
    }
    rename.addEventListener("click", () => editing(true));
    editor.cancel.addEventListener("click", () => editing(false));
    editor.form.addEventListener("keydown", (event) => {
      if (event.key !== "Escape") return;
      event.preventDefault();
      editing(false);
    });
    editor.form.addEventListener("submit", (event) => {
      event.preventDefault();
      withBusy(editor.save, async () => {
        let renamed;
        try {
          renamed = await api("PATCH", `/auth/passkeys/${encodeURIComponent(passkey.id)}`, {
            name: editor.input.value,
          });
        } catch (problem) {
          if (problem instanceof window.Tokenward.Problem && problem.status === 422) {
            editor.input.setAttribute("aria-invalid", "true");
          }
          showProblem(problem, notices);
          if (problem instanceof window.Tokenward.Problem && problem.status === 404) await load();
          else editor.input.focus();
          return;
        }
        setName(renamed.name);
        editing(false);
        showNotice("renamed", {}, notices);
      });
    });
    return li;
  }

  function renameForm(current) {
    renameForms += 1;
    const form = document.createElement("form");
    form.className = "form form--narrow";
    form.hidden = true;
    form.dataset.form = "passkey-rename";
    const field = document.createElement("div");
    field.className = "field";
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.id = `passkey-rename-${renameForms}`;
    input.name = "name";
    input.type = "text";
    input.maxLength = 64;
    input.autocomplete = "off";
    input.value = current;
    label.htmlFor = input.id;
    label.textContent = "New name for this passkey";
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.id = `${input.id}-hint`;
    hint.textContent = "Up to 64 characters; left empty, it is called “Passkey”.";
    input.setAttribute("aria-describedby", hint.id);
    field.append(label, input, hint);
    const buttons = document.createElement("p");
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "button button--primary button--small";
    save.textContent = "Save";
    save.dataset.busyLabel = "Saving…";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "button button--quiet button--small";
    cancel.textContent = "Cancel";
    buttons.append(save, " ", cancel);
    form.append(field, buttons);
    return { form, input, save, cancel };
  }

  async function load() {
    let passkeys;
    try {
      passkeys = (await api("GET", "/auth/passkeys")).passkeys;
    } catch (problem) {
      if (problem instanceof window.Tokenward.Problem && problem.status === 404) return; // off
      showProblem(problem, notices);
      return;
    }
    section.hidden = false;
    list.replaceChildren(...passkeys.map(item));
    empty.hidden = passkeys.length > 0;
    section.setAttribute("aria-busy", "false");
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = form.querySelector('[type="submit"]');
    const name = form.elements.name;
    withBusy(button, async () => {
      let created;
      try {
        const options = await api("POST", "/auth/passkeys/register/options", {});
        created = await navigator.credentials.create({
          publicKey: creationOptions(options.publicKey),
        });
      } catch (error) {
        if (cancelled(error)) showNotice("cancelled", {}, notices);
        else showProblem(error, notices);
        return;
      }
      try {
        await api("POST", "/auth/passkeys/register", {
          name: name.value.trim() || "Passkey",
          credential: credentialJSON(created),
        });
      } catch (problem) {
        showProblem(problem, notices);
        return;
      }
      form.reset();
      showNotice("added", {}, notices);
      await load();
    });
  });

  load();
}

if (supported) {
  const signIn = document.querySelector("[data-passkey-signin]");
  if (signIn) wireSignIn(signIn);
  const account = document.querySelector("[data-passkeys]");
  if (account) wireAccount(account);
}
