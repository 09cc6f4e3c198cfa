/* Desk UI behaviour: the queue refreshes itself without losing the officer's place, and keyboard
   shortcuts. Every page works without this file (plain links and forms); it only adds speed. */
(function () {
  "use strict";

  var SELECTED_KEY = "desk.selected";
  var live = document.getElementById("queue-live");

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("#queue-live tr[data-case-no]"));
  }

  function selectedRow() {
    return document.querySelector("#queue-live tr.is-selected");
  }

  /* Mark the row of case `caseNo` as the officer's place; with `focus`, move the focus to its link. */
  function select(caseNo, focus) {
    var target = null;
    rows().forEach(function (row) {
      var match = row.getAttribute("data-case-no") === caseNo;
      row.classList.toggle("is-selected", match);
      if (match) { target = row; }
    });
    if (!target) { return; }
    try { sessionStorage.setItem(SELECTED_KEY, caseNo); } catch (e) { /* storage off: selection is per page */ }
    if (focus) {
      target.querySelector("a.case-link").focus({ preventScroll: true });
      target.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    var all = rows();
    if (!all.length) { return; }
    var index = all.indexOf(selectedRow());
    var next = index < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, index + step));
    select(all[next].getAttribute("data-case-no"), true);
  }

  function rememberedCase() {
    try { return sessionStorage.getItem(SELECTED_KEY); } catch (e) { return null; }
  }

  /* Submit the form for `action` ("confirm", "check-in"): the selected row's on the queue, the page's elsewhere.
     Without one, say why key `key` did nothing. */
  function submitAction(action, key) {
    var scope = live ? selectedRow() : document;
    var form = scope && scope.querySelector('form[data-action="' + action + '"]');
    if (form) { form.requestSubmit(); } else { unavailable(key, !scope); }
  }

  function focusField(id, key) {
    var field = document.getElementById(id);
    if (field) { field.focus(); field.scrollIntoView({ block: "center" }); } else if (key) { unavailable(key, false); }
  }

  /* A key whose action the case does not offer now (its form is not on the page) says so in the shortcuts strip,
     a polite live region: read out without moving the focus, and gone after a while. `noCase`: none selected. */
  var statusLine = document.getElementById("shortcut-status");
  var statusTimer = null;
  function unavailable(key, noCase) {
    if (!statusLine) { return; }
    var shortcut = document.querySelector('.shortcuts [data-keys~="' + key + '"]');
    var message = noCase ? statusLine.getAttribute("data-no-case")
                         : shortcut && shortcut.getAttribute("data-unavailable");
    if (!message) { return; }
    said("");  // emptied first: the same message again is announced again
    statusTimer = window.setTimeout(function () {
      statusLine.textContent = message;
      statusTimer = window.setTimeout(function () { said(""); }, 6000);
    }, 50);
  }

  function said(message) {
    if (!statusLine) { return; }
    window.clearTimeout(statusTimer);
    statusLine.textContent = message;
  }

  function toggleHelp() {
    var help = document.getElementById("shortcut-help");
    if (!help) { return; }
    if (help.open) { help.close(); } else { help.showModal(); }
  }

  /* -- the queue's own refresh -------------------------------------------------------------- */
  if (live) {
    var url = live.getAttribute("data-refresh-url");
    var every = Math.max(1, parseInt(live.getAttribute("data-refresh-seconds"), 10) || 5) * 1000;
    var state = document.getElementById("refresh-state");
    var idleText = state ? state.textContent : "";
    var etag = null;

    var swap = function (html) {
      var holder = document.createElement("div");
      holder.innerHTML = html;
      var hadFocus = live.contains(document.activeElement);
      var scrollY = window.scrollY;
      live.replaceChildren.apply(live, Array.prototype.slice.call(holder.childNodes));
      select(rememberedCase(), hadFocus);
      window.scrollTo(0, scrollY);
    };

    var refresh = function () {
      var headers = etag ? { "If-None-Match": etag } : {};
      fetch(url, { headers: headers, credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); return null; }  // signed out: to the sign-in page
          if (response.status === 304 || response.status === 204) { return null; }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          etag = response.headers.get("ETag");
          return response.text();
        })
        .then(function (html) {
          if (html !== null) { swap(html); }
          if (state) { state.textContent = idleText; }
        })
        .catch(function () {
          if (state) { state.textContent = state.getAttribute("data-failed"); }
        })
        .finally(function () { window.setTimeout(refresh, every); });
    };
    window.setTimeout(refresh, every);

    live.addEventListener("click", function (event) {
      var row = event.target.closest("tr[data-case-no]");
      if (row) { select(row.getAttribute("data-case-no"), false); }
    });
    live.addEventListener("focusin", function (event) {
      var row = event.target.closest("tr[data-case-no]");
      if (row) { select(row.getAttribute("data-case-no"), false); }
    });
    select(rememberedCase(), false);
  }

  /* -- one click is one action: a form is sent once ----------------------------------------- */
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.method !== "post") { return; }
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
    // Disabled after the browser has read the form, so the pressed button's value still goes.
    window.setTimeout(function () {
      Array.prototype.forEach.call(form.querySelectorAll("button"), function (b) { b.disabled = true; });
    }, 0);
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest("[data-print]")) { window.print(); }
  });

  /* -- keyboard shortcuts (listed on each page) -------------------------------------------- */
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) { return; }
    var target = event.target;
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName) || target.isContentEditable;
    if (typing) {
      if (event.key === "Escape") { target.blur(); }
      return;
    }
    var handled = true;
    said("");  // what an earlier key said goes with the next one (a key that cannot act says so again below)
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "Enter":
        if (live && !/^(A|BUTTON)$/.test(target.tagName) && selectedRow()) {
          selectedRow().querySelector("a.case-link").click();
        } else { handled = false; }
        break;
      case "c": submitAction("confirm", "c"); break;
      case "i": submitAction("check-in", "i"); break;
      case "o": focusField("liability-first", "o"); break;
      case "r": focusField("retake-item", "r"); break;
      case "/": focusField("f-q"); break;
      case "u": {
        var back = document.getElementById("back-to-queue");
        if (back) { back.click(); } else { handled = false; }
        break;
      }
      case "?": toggleHelp(); break;
      default: handled = false;
    }
    if (handled) { event.preventDefault(); }
  });
  // Shortcuts work from here on (tests wait for it after each page load, as a person waits for the page).
  document.documentElement.setAttribute("data-shortcuts", "on");
})();
