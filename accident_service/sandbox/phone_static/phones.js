// The sandbox's two phones: each action is one POST (the server pushes it to /wechat as WeChat would);
// each pane polls what reached its phone and redraws when something new arrived.
(function () {
  "use strict";
  var csrf = document.querySelector("meta[name=csrf-token]").content;
  var base = location.pathname.replace(/\/$/, "");

  function post(phone, action, body, isForm) {
    var options = { method: "POST", headers: { "X-CSRFToken": csrf }, credentials: "same-origin" };
    if (isForm) { options.body = body; } else {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    return fetch(base + "/api/" + phone + "/" + action, options).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) { throw new Error(data.error || ("HTTP " + response.status)); }
        return data;
      });
    });
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function render(message) {
    var item;
    if (message.kind === "card") {
      item = element("li", "card");
      item.appendChild(element("h3", "", message.title));
      var list = element("dl");
      message.rows.forEach(function (row) {
        list.appendChild(element("dt", "", row[0]));
        list.appendChild(element("dd", "", row[1]));
      });
      item.appendChild(list);
      return item;
    }
    item = element("li", "msg " + message.from);
    if (message.from === "sms") { item.appendChild(element("span", "via", "短信 SMS")); }
    if (message.image) {
      var photo = element("img", "photo");
      photo.src = message.image; photo.alt = "照片";
      item.appendChild(photo);
    } else {
      item.appendChild(document.createTextNode(message.text));
    }
    if (message.qr) {
      var qr = element("img", "qr");
      qr.src = message.qr; qr.alt = "加入案件的二维码";
      item.appendChild(qr);
    }
    return item;
  }

  function Pane(section) {
    var key = section.dataset.phone;
    var chat = section.querySelector(".chat");
    var error = section.querySelector(".error");
    var shown = -1;
    var busy = false;

    function refresh() {
      return fetch(base + "/api/" + key + "/messages", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          section.querySelector(".following").hidden = !data.following;
          section.querySelector(".follow-bar").hidden = data.following;
          section.querySelectorAll(".menu button").forEach(function (b) { b.disabled = !data.following; });
          if (data.messages.length === shown) { return; }
          shown = data.messages.length;
          chat.replaceChildren.apply(chat, data.messages.map(render));
          chat.scrollTop = chat.scrollHeight;
          section.dataset.count = String(shown);
        })
        .catch(function () { /* the next poll tries again */ });
    }

    // One action at a time per phone: a driver waits for the answer before the next step.
    function act(action, body, isForm) {
      if (busy) { return; }
      busy = true;
      section.setAttribute("aria-busy", "true");
      error.textContent = "";
      post(key, action, body, isForm)
        .catch(function (e) { error.textContent = e.message; })
        .then(refresh)
        .then(function () { busy = false; section.removeAttribute("aria-busy"); });
    }

    section.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button) { return; }
      var action = button.dataset.action;
      if (action === "click") { act("click", { key: button.dataset.key }); }
      else if (action === "photo") { act("photo", { sample: button.dataset.sample }); }
      else if (action === "location") { act("location", { preset: section.querySelector("select").value }); }
      else if (action === "scan") { act("scan", {}); }
      else if (action === "follow") { act("follow", {}); }
    });
    section.querySelector("form.compose").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = event.target.elements.text;
      if (!input.value.trim()) { return; }
      act("text", { text: input.value });
      input.value = "";
    });
    section.querySelector("input[type=file]").addEventListener("change", function (event) {
      var file = event.target.files[0];
      if (!file) { return; }
      var form = new FormData();
      form.append("photo", file);
      act("photo", form, true);
      event.target.value = "";
    });
    refresh();
    setInterval(refresh, 1000);
  }

  document.querySelectorAll(".phone").forEach(Pane);
}());
