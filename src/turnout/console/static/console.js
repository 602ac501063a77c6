// turnout console: the only script. Confirms state-changing forms that ask for it, and reloads
// pages that show live state while they are visible and nobody is typing. No inline script
// anywhere (the Content-Security-Policy forbids it); this file is served by turnout itself.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

(() => {
  const every = Number(document.body.dataset.refresh || 0);
  if (!every) {
    return;
  }
  let typed = false;
  document.addEventListener("input", () => { typed = true; });
  setInterval(() => {
    const busy = document.activeElement && ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (document.visibilityState === "visible" && !busy && !typed) {
      window.location.reload();
    }
  }, every * 1000);
})();
