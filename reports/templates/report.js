"use strict";
// mailwarden report: filters, search, sorting and pagination over the embedded findings, and the
// per-domain view. Every value reaches the page through textContent or attributes, never as HTML.
// The table's first page comes in a small block before this script and shows at once; every finding
// (report-data, after this script) is read once the page is parsed.
(function () {
  var data = JSON.parse(document.getElementById("report-first").textContent);
  var PAGE = data.page, DPAGE = 25, TOTAL = data.total;
  var ATTENTION = { fail: 1, error: 1, excepted: 1, unsupported: 1 };
  var STATUS_ORDER = { fail: 0, error: 1, excepted: 2, unsupported: 3, pass: 4 };
  var F = { id: 0, check: 1, status: 2, severity: 3, tenant: 4, domain: 5, subject: 6, item: 7, reason: 8,
            evidence: 9, change: 10, link: 11, firstSeen: 12, flag: 13, count: 14, causedBy: 15 };
  var rows = [];
  data.first.forEach(function (i, n) { rows[i] = data.findings[n]; });
  var state = { tenant: "", domain: "", check: "", severity: "", status: "attention", q: "",
                sort: "severity", dir: -1, page: 0, open: {} };
  var matches = [];
  var searchText = null;

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function $(id) { return document.getElementById(id); }
  // Keys come from the data (a subject or a domain could be "constructor"): look up own properties only.
  function own(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined; }
  function status(r) { return data.statuses[r[F.status]]; }
  function severity(r) { return data.severities[r[F.severity]]; }
  function checkId(r) { return data.checks[r[F.check]][0]; }
  function title(r) { return data.checks[r[F.check]][1]; }
  function tenant(r) { return data.tenants[r[F.tenant]]; }
  function domain(r) { return data.domains[r[F.domain]]; }
  function show(value) {
    if (value === null || value === undefined || value === "") return "none";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Array.isArray(value)) return value.length ? value.map(show).join(", ") : "none";
    if (typeof value === "object") return Object.keys(value).sort().map(function (k) { return human(k) + ": " + show(value[k]); }).join("; ");
    return String(value);
  }
  function human(key) { return String(key).replace(/_/g, " "); }
  // A value that reads as a DNS record, an address list or a mechanism is set in monospace.
  function looksLiteral(text) { return /[=;:@]|\.$|^v=|\s(TXT|MX|CNAME)\s/.test(text); }
  function valueNode(value) {
    if (Array.isArray(value) && value.length > 1) {
      var ul = el("ul");
      value.forEach(function (v) { var li = el("li"); li.appendChild(valueNode(v)); ul.appendChild(li); });
      return ul;
    }
    if (Array.isArray(value)) return valueNode(value.length ? value[0] : null);
    if (value && typeof value === "object") {
      var dl = el("dl", null, "ev");
      Object.keys(value).sort().forEach(function (k) { dl.appendChild(el("dt", human(k))); var dd = el("dd"); dd.appendChild(valueNode(value[k])); dl.appendChild(dd); });
      return dl;
    }
    var text = show(value);
    if (text === "none") return el("span", "none", "muted");
    return el(looksLiteral(text) ? "code" : "span", text);
  }
  function label(td, text) { td.setAttribute("data-label", text); return td; }

  function fillSelect(select, values) {
    values.slice().sort().forEach(function (v) {
      var o = el("option", v); o.value = v; select.appendChild(o);
    });
  }
  function fillFilters() {
    fillSelect($("f-tenant"), data.tenants.filter(function (t) { return t; }));
    fillSelect($("f-domain"), data.domains.filter(function (d) { return d; }));
    fillSelect($("f-check"), data.checks.map(function (c) { return c[0]; }));
    data.severities.slice().reverse().forEach(function (v) {
      var o = el("option", v); o.value = v; $("f-severity").appendChild(o);
    });
    data.statuses.forEach(function (v) { var o = el("option", v); o.value = v; $("f-status").appendChild(o); });
  }

  function haystack(i) {
    if (searchText === null) searchText = new Array(rows.length);
    var text = searchText[i];
    if (text === undefined) {
      var r = rows[i];
      text = [r[F.id], checkId(r), title(r), tenant(r), domain(r), r[F.subject], own(data.names, r[F.subject]) || "", r[F.item], r[F.reason],
              JSON.stringify(r[F.evidence]), r[F.change] ? r[F.change].join(" ") : ""].join("\n").toLowerCase();
      searchText[i] = text;
    }
    return text;
  }

  var SORTS = {
    severity: function (r) { return r[F.severity]; },
    status: function (r) { return -STATUS_ORDER[status(r)]; },
    check: checkId, tenant: tenant, domain: domain,
    subject: function (r) { return r[F.subject] + "\u0000" + r[F.item]; },
    first_seen: function (r) { return r[F.firstSeen]; }
  };

  // A grouped finding's reason and evidence name its domain as "\u0001": each member's domain goes there.
  function fill(value, name) {
    if (typeof value === "string") return value.split("\u0001").join(name);
    if (Array.isArray(value)) return value.map(function (v) { return fill(v, name); });
    if (value && typeof value === "object") {
      var out = {};
      Object.keys(value).forEach(function (k) {
        Object.defineProperty(out, fill(k, name), { value: fill(value[k], name), enumerable: true, writable: true, configurable: true });
      });
      return out;
    }
    return value;
  }
  // Findings alike but for their subject (and the domain they name) come once, with a column per field
  // that differs (html.py PageData: ids, tenants, domains, then subjects, items, causes, links or null).
  function tableRows() {
    var out = data.findings.slice();
    data.groups.forEach(function (g) {
      var ids = g[9], tenants = g[10], domains = g[11], subjects = g[12], items = g[13], causes = g[14], links = g[15];
      for (var n = 0; n < ids.length; n++) {
        var name = data.domains[domains[n]];
        out.push([ids[n], g[0], g[1], g[2], tenants[n], domains[n],
                  subjects && subjects[n] !== null ? subjects[n] : name, items ? items[n] : "",
                  g[5] ? fill(g[3], name) : g[3], g[5] ? fill(g[4], name) : g[4], g[8], links ? links[n] : null,
                  g[6], g[7], 1, causes ? causes[n] : ""]);
      }
    });
    return out;
  }
  // Passes come as counts per check, tenant and severity over domain numbers (each the gap from the one
  // before); fn(pass, domain index, count) is called for each domain.
  function eachPass(fn) {
    data.passes.forEach(function (p) {
      var d = -1;
      p[3].forEach(function (gap, n) { d += gap; fn(p, d, typeof p[4] === "number" ? p[4] : p[4][n]); });
    });
  }
  // The pass rows (one per check and domain) are made only once the table is asked for passes.
  var passesRead = false;
  function readPasses() {
    if (passesRead) return;
    passesRead = true;
    var pass = data.statuses.indexOf("pass");
    eachPass(function (p, d, count) { rows.push(["", p[0], pass, p[2], p[1], d, "", "", "", null, null, null, "", 0, count, ""]); });
  }

  function compute() {
    if (state.status === "" || state.status === "pass") readPasses();
    var tenantI = state.tenant ? data.tenants.indexOf(state.tenant) : -1;
    var domainI = state.domain ? data.domains.indexOf(state.domain) : -1;
    var checkI = -1, sevI = state.severity ? data.severities.indexOf(state.severity) : -1;
    data.checks.forEach(function (c, i) { if (c[0] === state.check) checkI = i; });
    var words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    var out = [];
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (state.tenant && r[F.tenant] !== tenantI) continue;
      if (state.domain && r[F.domain] !== domainI) continue;
      if (state.check && r[F.check] !== checkI) continue;
      if (state.severity && r[F.severity] !== sevI) continue;
      var s = status(r);
      if (state.status === "attention" && !ATTENTION[s]) continue;
      if (state.status === "new" && !data.history) continue;
      if (state.status === "new" && !r[F.flag]) continue;
      if (state.status && state.status !== "attention" && state.status !== "new" && s !== state.status) continue;
      if (words.length) {
        var text = haystack(i), ok = true;
        for (var w = 0; w < words.length; w++) { if (text.indexOf(words[w]) < 0) { ok = false; break; } }
        if (!ok) continue;
      }
      out.push(i);
    }
    var key = SORTS[state.sort] || SORTS.severity, dir = state.dir;
    var keys = {};
    out.forEach(function (i) { keys[i] = key(rows[i]); });
    out.sort(function (a, b) {
      var ka = keys[a], kb = keys[b];
      if (ka < kb) return -dir;
      if (ka > kb) return dir;
      var sa = STATUS_ORDER[status(rows[a])] - STATUS_ORDER[status(rows[b])];
      if (sa) return sa;
      return a - b;
    });
    matches = out;
  }

  function evidenceList(r) {
    var box = el("div");
    if (r[F.reason]) box.appendChild(el("p", r[F.reason]));
    var ev = r[F.evidence] || {};
    var dl = el("dl", null, "ev"), any = false;
    Object.keys(ev).sort().forEach(function (k) {
      if (k === "publish" || ev[k] === null || ev[k] === undefined || ev[k] === "") return;
      any = true;
      dl.appendChild(el("dt", human(k)));
      var dd = el("dd"); dd.appendChild(valueNode(ev[k])); dl.appendChild(dd);
    });
    if (any) box.appendChild(dl);
    if (ev.publish) {
      box.appendChild(el("strong", "Publish"));
      (Array.isArray(ev.publish) ? ev.publish : [show(ev.publish)]).forEach(function (rec) { box.appendChild(el("pre", show(rec), "publish")); });
    }
    return box;
  }
  var byId = Object.create(null), dependantsOf = Object.create(null);
  function indexCauses() {
    rows.forEach(function (r, i) {
      if (r[F.id]) byId[r[F.id]] = i;
      if (r[F.causedBy]) (dependantsOf[r[F.causedBy]] = dependantsOf[r[F.causedBy]] || []).push(i);
    });
  }
  function causeBlock(r) {
    var box = el("div");
    if (r[F.causedBy]) {
      var p = el("p", "Follows from ");
      var cause = own(byId, r[F.causedBy]), a = el("a", cause !== undefined ? checkId(rows[cause]) + " on " + rows[cause][F.subject] : r[F.causedBy]);
      a.setAttribute("href", "#finding=" + encodeURIComponent(r[F.causedBy]));
      p.appendChild(a); p.appendChild(document.createTextNode(": it clears when that is fixed and is not counted twice."));
      box.appendChild(p);
    }
    var deps = own(dependantsOf, r[F.id]) || [];
    if (deps.length) {
      box.appendChild(el("strong", deps.length + " finding" + (deps.length === 1 ? "" : "s") + " follow from this one"));
      var ul = el("ul");
      deps.forEach(function (i) { var li = el("li"); li.appendChild(el("code", checkId(rows[i]))); li.appendChild(document.createTextNode(" " + title(rows[i]))); ul.appendChild(li); });
      box.appendChild(ul);
    }
    return box;
  }

  function changeBlock(r) {
    var c = r[F.change];
    var box = el("div", null, "change");
    if (c[0] === "dns.publish") {
      // The record itself is shown once, as "Publish"; what is left to say is how to verify it.
      box.appendChild(el("p", "Once it is published, mailwarden checks it on the next run" + (r[F.link] ? ", or now:" : ".")));
      if (r[F.link] && /^https?:/i.test(r[F.link])) {
        var verify = $("remediation-link").content.cloneNode(true);
        var va = verify.querySelector("a");
        va.textContent = "Verify once published"; va.setAttribute("href", r[F.link]); box.appendChild(verify);
      }
      return box;
    }
    box.appendChild(el("strong", "What " + c[0] + " would change"));
    box.appendChild(el("p", c[1]));
    var p = el("p");
    p.appendChild(el("span", "before: ")); p.appendChild(el("code", c[2]));
    p.appendChild(el("span", " → after: ")); p.appendChild(el("code", c[3]));
    box.appendChild(p);
    if (r[F.link]) {
      // The remediation link template (one place, in report.html.j2) is filled here when a link exists.
      var link = $("remediation-link").content.cloneNode(true);
      var a = link.querySelector("a");
      if (/^https?:/i.test(r[F.link])) { a.setAttribute("href", r[F.link]); box.appendChild(link); }
    }
    return box;
  }

  function detailRow(r) {
    var tr = el("tr", null, "detail");
    var td = el("td"); td.colSpan = 8;
    var head = el("p");
    head.appendChild(el("strong", title(r)));
    if (r[F.count] > 1 || !r[F.id]) {
      td.appendChild(head);
      td.appendChild(el("p", r[F.count] + " subjects of " + domain(r) + " pass this check; each pass, with its evidence, is in findings.json and the evidence pack.", "muted"));
      tr.appendChild(td);
      return tr;
    }
    head.appendChild(el("span", "  id " + r[F.id] + (r[F.item] ? "  item " + r[F.item] : ""), "muted"));
    td.appendChild(head);
    td.appendChild(causeBlock(r));
    td.appendChild(evidenceList(r));
    if (r[F.change]) td.appendChild(changeBlock(r));
    tr.appendChild(td);
    return tr;
  }

  function showRows(slice) {
    var frag = document.createDocumentFragment();
    slice.forEach(function (i) {
      var r = rows[i], s = status(r);
      var tr = el("tr", null, "finding");
      tr.dataset.index = i; tr.dataset.status = s; tr.dataset.check = checkId(r); tr.id = "finding-" + r[F.id];
      var st = label(el("td", s, "st st-" + s), "status");
      if (r[F.flag] && data.history) { st.appendChild(document.createTextNode(" ")); st.appendChild(el("span", r[F.flag] === 2 ? "reopened" : "new", "badge")); }
      tr.appendChild(st);
      var sv = label(el("td"), "severity"); sv.appendChild(el("span", severity(r), "badge sev-" + severity(r))); tr.appendChild(sv);
      var c = label(el("td"), "check"); c.appendChild(el("code", checkId(r))); c.appendChild(el("br")); c.appendChild(document.createTextNode(title(r)));
      tr.appendChild(c);
      tr.appendChild(label(el("td", tenant(r)), "tenant"));
      var d = label(el("td"), "domain"), a = el("a", domain(r), "domain-link");
      a.setAttribute("href", "#domain=" + encodeURIComponent(domain(r))); d.appendChild(a);
      tr.appendChild(d);
      var sub = label(el("td", r[F.id] ? r[F.subject] : r[F.count] + (r[F.count] === 1 ? " subject passes" : " subjects pass")), "subject");
      var shown = own(data.names, r[F.subject]);
      if (shown) { sub.appendChild(el("br")); sub.appendChild(el("span", shown, "muted")); }
      if (r[F.item]) { sub.appendChild(el("br")); sub.appendChild(el("code", r[F.item])); }
      tr.appendChild(sub);
      tr.appendChild(label(el("td", (r[F.firstSeen] || "").slice(0, 10)), "first seen"));
      var fix = label(el("td"), "fix");
      if (r[F.causedBy]) fix.appendChild(el("span", "clears with its cause", "muted"));
      else if (r[F.change]) fix.appendChild(el("code", r[F.change][0]));
      else if (r[F.evidence] && r[F.evidence].publish) fix.appendChild(el("span", "publish a record"));
      tr.appendChild(fix);
      frag.appendChild(tr);
      if (state.open[i]) frag.appendChild(detailRow(r));
    });
    $("findings-body").replaceChildren(frag);
  }
  // "grouped": how many passes the matching rows count, as one row per check and domain.
  function showCount(start, shown, matching, grouped) {
    $("findings-count").textContent = matching === 0
      ? "No finding matches these filters (" + TOTAL + " in this run)."
      : "Showing " + (start + 1) + "–" + (start + shown) + " of " + matching +
        " matching " + (grouped ? "rows (" + grouped + " passes counted per check and domain), " : "findings (") +
        TOTAL + " in this run).";
    $("page-info").textContent = "page " + (state.page + 1) + " of " + Math.max(1, Math.ceil(matching / PAGE));
    document.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.classList.toggle("asc", th.dataset.sort === state.sort && state.dir === 1);
      th.classList.toggle("desc", th.dataset.sort === state.sort && state.dir === -1);
    });
  }

  function render() {
    var pages = Math.max(1, Math.ceil(matches.length / PAGE));
    if (state.page >= pages) state.page = pages - 1;
    if (state.page < 0) state.page = 0;
    var start = state.page * PAGE, slice = matches.slice(start, start + PAGE);
    showRows(slice);
    var grouped = 0;
    matches.forEach(function (i) { if (!rows[i][F.id]) grouped += rows[i][F.count]; });
    showCount(start, slice.length, matches.length, grouped);
  }

  function update() { compute(); state.page = 0; render(); }
  function readFilters() {
    state.tenant = $("f-tenant").value; state.domain = $("f-domain").value; state.check = $("f-check").value;
    state.severity = $("f-severity").value; state.status = $("f-status").value; state.q = $("f-search").value;
  }
  function writeFilters() {
    $("f-tenant").value = state.tenant; $("f-domain").value = state.domain; $("f-check").value = state.check;
    $("f-severity").value = state.severity; $("f-status").value = state.status; $("f-search").value = state.q;
  }
  function wireTable() {
    ["f-tenant", "f-domain", "f-check", "f-severity", "f-status"].forEach(function (id) {
      $(id).addEventListener("change", function () { readFilters(); update(); });
    });
    var timer = null;
    $("f-search").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { readFilters(); update(); }, 150);
    });
    $("filters").addEventListener("submit", function (e) { e.preventDefault(); });
    $("f-reset").addEventListener("click", function () {
      state.tenant = state.domain = state.check = state.severity = state.q = ""; state.status = "attention";
      writeFilters(); update();
    });
    document.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () {
        if (state.sort === th.dataset.sort) state.dir = -state.dir;
        else { state.sort = th.dataset.sort; state.dir = th.dataset.sort === "severity" ? -1 : 1; }
        compute(); render();
      });
    });
    $("pager").addEventListener("click", function (e) {
      var which = e.target.dataset && e.target.dataset.page;
      if (!which) return;
      state.page += which === "next" ? 1 : -1; render();
    });
    $("findings-body").addEventListener("click", function (e) {
      if (e.target.closest("a")) return;
      var tr = e.target.closest("tr.finding");
      if (!tr) return;
      var i = Number(tr.dataset.index);
      if (state.open[i]) delete state.open[i]; else state.open[i] = true;
      render();
    });
    document.querySelectorAll("[data-filter-tenant]").forEach(function (a) {
      a.addEventListener("click", function (e) {
        e.preventDefault(); state.tenant = a.dataset.filterTenant; writeFilters(); update();
        $("findings-section").scrollIntoView();
      });
    });
  }

  // Domains: an index with counts, and one domain's records as seen, what is wrong and what to publish.
  var domainCounts = Object.create(null), domainNames = [];
  var dstate = { q: "", page: 0, list: domainNames };
  function countDomains() {
    data.domains.forEach(function (d) { domainCounts[d] = { tenant: "", counts: {} }; });
    Object.keys(data.dns).forEach(function (d) { domainCounts[d].tenant = data.tenants[data.dns[d][0]]; });
    eachPass(function (p, d, count) {
      var entry = domainCounts[data.domains[d]];
      if (!entry.tenant) entry.tenant = data.tenants[p[1]];
      entry.counts.pass = (entry.counts.pass || 0) + count;
    });
    rows.forEach(function (r) {
      if (!r[F.id]) return;  // a pass row, counted above
      var entry = domainCounts[domain(r)];
      if (!entry.tenant) entry.tenant = tenant(r);
      var s = status(r); entry.counts[s] = (entry.counts[s] || 0) + (r[F.count] || 1);
    });
    domainNames = dstate.list = data.domains.filter(function (d) { return d; }).sort(function (a, b) {
      var fa = domainCounts[a].counts.fail || 0, fb = domainCounts[b].counts.fail || 0;
      return fb - fa || (a < b ? -1 : a > b ? 1 : 0);
    });
  }
  function renderDomains() {
    var pages = Math.max(1, Math.ceil(dstate.list.length / DPAGE));
    if (dstate.page >= pages) dstate.page = pages - 1;
    if (dstate.page < 0) dstate.page = 0;
    var frag = document.createDocumentFragment();
    dstate.list.slice(dstate.page * DPAGE, dstate.page * DPAGE + DPAGE).forEach(function (d) {
      var tr = el("tr"), td = label(el("td"), "domain"), a = el("a", d, "domain-link");
      a.setAttribute("href", "#domain=" + encodeURIComponent(d)); td.appendChild(a); tr.appendChild(td);
      tr.appendChild(label(el("td", domainCounts[d].tenant), "tenant"));
      data.statuses.forEach(function (s) { var n = domainCounts[d].counts[s] || 0; tr.appendChild(label(el("td", n, n && s !== "pass" ? "st-" + s : ""), s)); });
      frag.appendChild(tr);
    });
    $("domain-index-body").replaceChildren(frag);
    $("domain-page-info").textContent = dstate.list.length + " domains, page " + (dstate.page + 1) + " of " + pages;
  }

  function seenOf(r) {
    var ev = r[F.evidence] || {}, parts = [];
    ["record", "records_seen", "looked_up", "outcome", "problem", "problems", "note"].forEach(function (k) {
      if (ev[k] !== undefined && ev[k] !== null && ev[k] !== "") parts.push(human(k) + ": " + show(ev[k]));
    });
    if (!parts.length) {
      Object.keys(ev).sort().forEach(function (k) { if (k !== "publish" && ev[k] !== null && ev[k] !== "") parts.push(human(k) + ": " + show(ev[k])); });
    }
    if (r[F.reason]) parts.push(r[F.reason]);
    return parts.join("\n");
  }

  function openDomain(name) {
    var view = $("domain-view");
    var dns = own(data.dns, name);
    if (!dns && !domainCounts[name]) { view.hidden = true; return; }
    $("domain-view-title").textContent = name;
    // dns: [tenant, parked, catch-all, numbers into data.answers]; an answer's name under the domain is [prefix],
    // a record naming the domain the pieces around it
    $("domain-view-meta").textContent = "tenant " + ((dns && data.tenants[dns[0]]) || domainCounts[name].tenant) +
      (dns && dns[1] ? " · parked (sends no mail)" : "") + (dns && dns[2] ? " · catch-all to " + dns[2] : "");
    var recs = document.createDocumentFragment();
    ((dns && dns[3]) || []).forEach(function (n) {
      var a = data.answers[n], qname = Array.isArray(a[1]) ? (a[1][0] ? a[1][0] + "." + name : name) : a[1];
      var tr = el("tr");
      tr.appendChild(label(el("td", a[0]), "looked up for")); tr.appendChild(label(el("td", qname), "name")); tr.appendChild(label(el("td", a[2]), "type"));
      tr.appendChild(label(el("td", a[3] + (a[5] ? ": " + a[5] : ""), a[3] === "failed" ? "error" : ""), "outcome"));
      var td = label(el("td"), "records");
      (a[4] || []).forEach(function (rec) { td.appendChild(el("pre", Array.isArray(rec) ? rec.join(name) : rec)); });
      if (!(a[4] || []).length) td.appendChild(el("span", "none", "muted"));
      tr.appendChild(td); recs.appendChild(tr);
    });
    if (!dns) { var none = el("tr"); var td0 = el("td", "no DNS snapshot for this domain in this run", "muted"); td0.colSpan = 5; none.appendChild(td0); recs.appendChild(none); }
    $("domain-records").tBodies[0].replaceChildren(recs);
    var probs = document.createDocumentFragment(), count = 0;
    rows.forEach(function (r) {
      if (domain(r) !== name || !ATTENTION[status(r)]) return;
      count++;
      var tr = el("tr");
      tr.appendChild(label(el("td", status(r), "st st-" + status(r)), "status"));
      var sv = label(el("td"), "severity"); sv.appendChild(el("span", severity(r), "badge sev-" + severity(r))); tr.appendChild(sv);
      var c = label(el("td"), "check"); c.appendChild(el("code", checkId(r))); c.appendChild(el("br")); c.appendChild(document.createTextNode(title(r)));
      tr.appendChild(c);
      tr.appendChild(label(el("td", r[F.subject] + (r[F.item] ? " " + r[F.item] : "")), "subject"));
      tr.appendChild(label(el("td", null), "as seen")).appendChild(el("pre", seenOf(r)));
      var fix = label(el("td"), "publish / fix"), ev = r[F.evidence] || {};
      if (ev.publish) (Array.isArray(ev.publish) ? ev.publish : [ev.publish]).forEach(function (rec) { fix.appendChild(el("pre", show(rec), "publish")); });
      if (r[F.change]) fix.appendChild(changeBlock(r));
      tr.appendChild(fix); probs.appendChild(tr);
    });
    if (!count) { var ok = el("tr"); var td1 = el("td", "nothing wrong found on this domain", "muted"); td1.colSpan = 6; ok.appendChild(td1); probs.appendChild(ok); }
    $("domain-problems").tBodies[0].replaceChildren(probs);
    $("domain-view-filter").dataset.domain = name;
    view.hidden = false;
    view.scrollIntoView();
  }
  function wireDomains() {
    $("d-search").addEventListener("input", function () {
      var q = this.value.toLowerCase();
      dstate.list = domainNames.filter(function (d) { return d.toLowerCase().indexOf(q) >= 0; });
      dstate.page = 0; renderDomains();
    });
    $("domain-pager").addEventListener("click", function (e) {
      var which = e.target.dataset && e.target.dataset.dpage;
      if (!which) return;
      dstate.page += which === "next" ? 1 : -1; renderDomains();
    });
    $("domain-view-filter").addEventListener("click", function (e) {
      e.preventDefault();
      state.domain = this.dataset.domain; state.status = ""; writeFilters(); update();
      $("findings-section").scrollIntoView();
    });
    $("domain-view-close").addEventListener("click", function () { $("domain-view").hidden = true; });
  }

  function route() {
    var hash = location.hash.slice(1);
    if (hash.indexOf("domain=") === 0) openDomain(decodeURIComponent(hash.slice(7)));
    else if (hash.indexOf("finding=") === 0) {
      var id = decodeURIComponent(hash.slice(8));
      state.tenant = state.domain = state.check = state.severity = state.status = ""; state.q = id; writeFilters(); update();
      matches.forEach(function (i) { if (rows[i][F.id] === id) state.open[i] = true; });
      render();
      var row = $("finding-" + id); if (row) row.scrollIntoView();
    }
  }
  function wireRoutes() {
    window.addEventListener("hashchange", route);
    // A link to the finding or domain already in the address changes no hash: route it all the same.
    document.addEventListener("click", function (e) {
      var a = e.target.closest && e.target.closest('a[href^="#finding="], a[href^="#domain="]');
      if (a && a.getAttribute("href") === location.hash) { e.preventDefault(); route(); }
    });
  }

  // The fix-first list: ten causes at first, ten more per click.
  var more = $("fix-more");
  function shownCauses() {
    var hidden = document.querySelectorAll("#fix-list li.later:not(.shown)").length;
    var all = document.querySelectorAll("#fix-list li.cause").length;
    $("fix-shown").textContent = "showing " + (all - hidden) + " of " + all;
    more.disabled = hidden === 0;
  }
  if (more) {
    more.addEventListener("click", function () {
      var hidden = document.querySelectorAll("#fix-list li.later:not(.shown)");
      for (var i = 0; i < hidden.length && i < 10; i++) hidden[i].classList.add("shown");
      shownCauses();
    });
    shownCauses();
  }

  showRows(data.first);
  showCount(0, data.first.length, data.matching, 0);
  // The rest waits for every finding; a filter set or a link followed meanwhile applies once they are read.
  document.addEventListener("DOMContentLoaded", function () {
    data = JSON.parse(document.getElementById("report-data").textContent);
    rows = tableRows();
    fillFilters(); indexCauses(); countDomains();
    wireTable(); wireDomains(); wireRoutes();
    readFilters(); compute(); render(); renderDomains(); route();
  });
})();
