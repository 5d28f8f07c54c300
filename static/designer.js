// The designer's graph as something to act on. Its nodes are plain links to
// the same design with that node selected (the page works without this file);
// here they become htmx requests for the workspace alone, and keys are added:
// Enter selects the focused node, Delete (or Backspace) removes the focused
// processor, Ctrl-Z / Ctrl-Shift-Z (Ctrl-Y) are the browser's Back / Forward,
// which undo and redo since every change is an entry in the history.
(function () {
  "use strict";
  var XLINK = "http://www.w3.org/1999/xlink";
  var refocus = null;

  function nodeLink(target) {
    return target && target.closest ? target.closest("#designer-graph a") : null;
  }

  function hrefOf(link) {
    return link.getAttribute("href") || link.getAttributeNS(XLINK, "href");
  }

  function nodeId(link) {
    var node = link.closest("g.node");
    return node ? node.id : "";
  }

  function load(href, focusId) {
    var url = new URL(href, window.location.href);
    refocus = focusId;
    htmx.ajax("GET", "/designer/workspace" + url.search, { target: "#designer-workspace", swap: "innerHTML" });
  }

  function removeNode(link) {
    var id = nodeId(link);
    if (id.indexOf("node-") !== 0) return false;
    var url = new URL(hrefOf(link), window.location.href);
    url.searchParams.delete("select");
    url.searchParams.set("remove", id.slice(5));
    load(url.pathname + url.search, "designer-graph");
    return true;
  }

  document.addEventListener("click", function (event) {
    var link = nodeLink(event.target);
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    load(hrefOf(link), nodeId(link));
  });

  document.addEventListener("keydown", function (event) {
    var link = nodeLink(event.target);
    if (link && event.key === "Enter") {
      event.preventDefault();
      load(hrefOf(link), nodeId(link));
      return;
    }
    if (link && (event.key === "Delete" || event.key === "Backspace")) {
      if (removeNode(link)) event.preventDefault();
      return;
    }
    var key = event.key.toLowerCase();
    if (!(event.ctrlKey || event.metaKey) || (key !== "z" && key !== "y")) return;
    if (!document.getElementById("designer")) return;
    if (event.target.closest && event.target.closest("input, textarea, select, [contenteditable]")) return;
    event.preventDefault();
    if (key === "y" || event.shiftKey) window.history.forward();
    else window.history.back();
  });

  document.addEventListener("htmx:afterSettle", function () {
    if (!refocus) return;
    var target = document.getElementById(refocus);
    refocus = null;
    if (!target) return;
    var link = target.querySelector("a") || target.querySelector("#designer-graph a");
    if (link) link.focus();
  });
})();
