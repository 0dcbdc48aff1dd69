// kdbench leaderboard: sortable tables and the risk-metric switch. Inlined into every page; vanilla JS, no dependencies.
(function () {
  "use strict";

  // The value a cell sorts by: its data-sort attribute, else its text.
  function sortValue(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) { return numeric ? NaN : ""; }
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    return numeric ? (raw === "" ? NaN : Number(raw)) : raw.toLowerCase();
  }

  function compare(a, b, numeric) {
    if (numeric) {
      if (isNaN(a) && isNaN(b)) { return 0; }
      if (isNaN(a)) { return 1; }  // missing values last in either direction
      if (isNaN(b)) { return -1; }
      return a - b;
    }
    return a < b ? -1 : (a > b ? 1 : 0);
  }

  // First click sorts ascending, the next descending; ties keep their current order.
  function sortBy(table, header) {
    var headers = Array.prototype.slice.call(header.parentNode.children);
    var index = headers.indexOf(header);
    var numeric = header.getAttribute("data-type") === "num";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, position) {
      return { row: row, position: position, value: sortValue(row, index, numeric) };
    });
    rows.sort(function (a, b) {
      var order = compare(a.value, b.value, numeric);
      if (order !== 0 && !(numeric && (isNaN(a.value) || isNaN(b.value)))) {
        order = ascending ? order : -order;
      }
      return order !== 0 ? order : a.position - b.position;
    });
    rows.forEach(function (item) { body.appendChild(item.row); });
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th[data-type]").forEach(function (header) {
      header.addEventListener("click", function () { sortBy(table, header); });
    });
  });

  // "Rank by": show the rankings (chart + table) of one risk metric everywhere on the page, hide the others.
  function showMetric(metric) {
    document.querySelectorAll(".by-metric").forEach(function (view) {
      view.hidden = view.getAttribute("data-metric") !== metric;
    });
    document.querySelectorAll(".metric-switch button").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.getAttribute("data-metric") === metric));
    });
  }

  document.querySelectorAll(".metric-switch button").forEach(function (button) {
    button.addEventListener("click", function () { showMetric(button.getAttribute("data-metric")); });
  });
})();
