
(function () {
  function value(td, numeric) {
    var v = td.getAttribute('data-v');
    if (v === null || v === '') return null;
    return numeric ? parseFloat(v) : v.toLowerCase();
  }
  function sortTable(table, col, dir) {
    var heads = table.tHead.rows[0].cells, th = heads[col];
    var numeric = th.getAttribute('data-type') === 'num';
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a.cells[col], numeric), y = value(b.cells[col], numeric);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return dir === 'asc' ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute('aria-sort');
    th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
  }
  var tables = document.querySelectorAll('table.lb');
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener('click', function () {
        var now = th.getAttribute('aria-sort');
        var dir = now === 'descending' ? 'asc' : (now === 'ascending' ? 'desc' : th.getAttribute('data-first'));
        sortTable(table, i, dir);
      });
    });
  });
  var m = /sort=(\d+):([\w-]+):(asc|desc)/.exec(window.location.hash);
  if (m && tables[+m[1]]) {
    var cells = tables[+m[1]].tHead.rows[0].cells;
    for (var i = 0; i < cells.length; i++) {
      if (cells[i].getAttribute('data-key') === m[2]) sortTable(tables[+m[1]], i, m[3]);
    }
  }
  document.documentElement.setAttribute('data-ready', '1');
})();
