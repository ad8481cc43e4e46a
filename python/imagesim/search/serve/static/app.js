// imagesim viewer: imagery tiles (over an optional basemap), the chip grid, similar-chip search from positive and
// negative examples (kept in the URL), paged and clustered results, exports, ARD mask outlines, and the change layer
// of `imagesim change` with a before/after view of a chip.
// Plain ES2017, no build step; every string from the API goes through textContent (no innerHTML).
(function () {
  "use strict";

  var GRID_MIN_ZOOM = 14;
  var EMPTY_TILE = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
  var $ = function (id) { return document.getElementById(id); };
  // outline colours of the ARD mask layers (style.css has the same ones for the legend swatches)
  var MASK_COLOURS = { cloud: "#ffffff", cloud_shadow: "#b36bff", terrain_shadow: "#ff8c1a", water: "#1e90ff", vegetation: "#39d353" };
  var MASK_PAD = 0.2; // ask for a bit more than the view: the clip edges stay off screen while panning
  var PAGE_SIZE = 50; // results listed per page
  var CLUSTER_PX = 48; // results closer than this on screen are drawn as one numbered circle
  var FOOTPRINT_MIN_ZOOM = 14; // a lone result is drawn as its chip outline from this zoom on, as a dot below
  var CHANGE_TOP = 200; // change outlines drawn per view, the best-ranked first
  var CHANGE_RAMP = [[44, 123, 182], [255, 255, 191], [215, 25, 28]]; // score 0 → 0.5 → 1 (style.css: the legend)
  var CHANGE_THUMB = 512;

  var state = {
    info: null, tilejson: null, acquisition: "", gridAbort: null, resultLayers: {}, masks: {},
    positives: [], negatives: [], hits: [], features: [], page: 0, seq: 0, abort: null, searches: 0,
    changes: { on: false, abort: null, current: null, pairs: [], seq: 0 },
  };

  var map = L.map("map", { zoomControl: true, maxZoom: 22, worldCopyJump: false });
  L.control.scale({ imperial: false }).addTo(map);
  var imagery = null;
  var basemap = null;
  var gridLayer = L.geoJSON(null, {
    style: { color: "#7fd3ff", weight: 1, opacity: 0.7, fillOpacity: 0.0, className: "chip-cell" },
    onEachFeature: function (feature, layer) {
      layer.on("click", function (e) {
        L.DomEvent.stopPropagation(e); // the map's own click would add the chip a second time
        addExample(feature.properties.chip, isNegativeClick(e));
      });
      layer.on("mouseover", function () { layer.setStyle({ fillOpacity: 0.15, fillColor: "#7fd3ff" }); });
      layer.on("mouseout", function () { layer.setStyle({ fillOpacity: 0.0 }); });
    },
  }).addTo(map);
  var resultsLayer = L.featureGroup().addTo(map);
  var positiveLayer = L.geoJSON(null, { style: { color: "#1a7f37", weight: 3, fillOpacity: 0.1, interactive: false, className: "positive-cell" } }).addTo(map);
  var negativeLayer = L.geoJSON(null, { style: { color: "#ff3b30", weight: 3, fillOpacity: 0.1, dashArray: "6 4", interactive: false, className: "negative-cell" } }).addTo(map);

  function status(text, isError) {
    var el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "muted";
  }

  function getJSON(url, opts) {
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) { throw new Error(body.detail || ("HTTP " + r.status)); }
        return body;
      });
    });
  }

  function escapeHtml(text) {
    // Leaflet writes attributions as HTML: the server's attribution is text
    return String(text).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; });
  }

  function acqQuery(prefix) {
    return state.acquisition ? prefix + "acquisition=" + encodeURIComponent(state.acquisition) : "";
  }

  function isNegativeClick(e) {
    var ev = e && e.originalEvent;
    return !!(ev && ev.shiftKey) || $("click-negative").checked;
  }

  // A tile layer whose images send only the page's origin as Referer (the page itself sends none: tile
  // servers such as OpenStreetMap's ask for one; the search in the URL stays private).
  var BasemapLayer = L.TileLayer.extend({
    createTile: function (coords, done) {
      var tile = document.createElement("img");
      L.DomEvent.on(tile, "load", L.Util.bind(this._tileOnLoad, this, done, tile));
      L.DomEvent.on(tile, "error", L.Util.bind(this._tileOnError, this, done, tile));
      tile.referrerPolicy = "strict-origin";
      tile.alt = "";
      tile.setAttribute("role", "presentation");
      tile.src = this.getTileUrl(coords);
      return tile;
    },
  });

  function setBasemap() {
    var b = state.info && state.info.basemap;
    if (!b) { return; }
    basemap = new BasemapLayer(b.url, {
      maxNativeZoom: 19, maxZoom: 22, tileSize: 256, className: "basemap", errorTileUrl: EMPTY_TILE,
      attribution: escapeHtml(b.attribution),
    });
    basemap.addTo(map);
    basemap.bringToBack();
  }

  function setImagery() {
    if (imagery) { map.removeLayer(imagery); }
    var tj = state.tilejson;
    // PNG: no-data is transparent, so the basemap (or the map's background) shows through
    imagery = L.tileLayer("/tiles/{z}/{x}/{y}.png" + acqQuery("?"), {
      minZoom: tj.minzoom, maxNativeZoom: tj.maxzoom, maxZoom: 22, tileSize: 256, className: "imagery",
      errorTileUrl: EMPTY_TILE, attribution: escapeHtml(tj.attribution),
      bounds: L.latLngBounds([tj.bounds[1], tj.bounds[0]], [tj.bounds[3], tj.bounds[2]]).pad(0.05),
    });
    imagery.addTo(map);
    imagery.bringToBack();
    if (basemap) { basemap.bringToBack(); }
  }

  function loadGrid() {
    if (state.gridAbort) { state.gridAbort.abort(); state.gridAbort = null; }
    if (map.getZoom() < GRID_MIN_ZOOM || !state.info || !state.info.chips) {
      gridLayer.clearLayers();
      document.body.dataset.grid = "0";
      return;
    }
    var b = map.getBounds();
    var bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map(function (v) { return v.toFixed(6); }).join(",");
    var ctrl = new AbortController();
    state.gridAbort = ctrl;
    getJSON("/api/chips?bbox=" + bbox + acqQuery("&"), { signal: ctrl.signal }).then(function (fc) {
      gridLayer.clearLayers();
      gridLayer.addData(fc);
      document.body.dataset.grid = String(fc.count);
    }).catch(function (err) {
      if (err.name !== "AbortError") { status("chip grid: " + err.message, true); }
    });
  }

  function shareText(label, fraction) {
    if (fraction === null || fraction === undefined) { return label + " –"; }
    var pct = fraction * 100;
    return label + " " + (pct > 0 && pct < 1 ? pct.toFixed(1) : String(Math.round(pct))) + " %";
  }

  function cloudText(fraction) { return shareText("cloud", fraction); }

  function button(text, title, onClick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.title = title;
    b.addEventListener("click", function (e) { e.stopPropagation(); onClick(e); });
    return b;
  }

  function card(hit) {
    var li = document.createElement("li");
    li.className = "chip-card";
    li.dataset.chip = hit.chip;
    var img = document.createElement("img");
    // not lazy: a page holds at most PAGE_SIZE thumbnails, and the list is read as a whole
    img.alt = hit.chip;
    img.src = hit.thumbnail;
    var meta = document.createElement("div");
    meta.className = "meta";
    var score = document.createElement("div");
    score.className = "score";
    score.textContent = "#" + hit.rank + "  score " + hit.score.toFixed(3);
    var name = document.createElement("div");
    name.className = "name";
    name.textContent = hit.chip;
    var labels = document.createElement("div");
    labels.className = "labels";
    labels.textContent = (hit.labels && hit.labels.length) ? hit.labels.join(", ") : "";
    meta.appendChild(score);
    meta.appendChild(name);
    var where = document.createElement("div");
    where.className = "muted";
    where.textContent = hit.lat.toFixed(5) + ", " + hit.lon.toFixed(5);
    meta.appendChild(where);
    var cloud = document.createElement("div");
    cloud.className = "cloud";
    cloud.textContent = cloudText(hit.cloud_fraction);
    meta.appendChild(cloud);
    if (hit.valid_fraction !== undefined && hit.valid_fraction !== null) { // an index with valid fractions
      var valid = document.createElement("div");
      valid.className = "valid";
      valid.textContent = shareText("valid", hit.valid_fraction);
      meta.appendChild(valid);
    }
    meta.appendChild(labels);
    var actions = document.createElement("div");
    actions.className = "actions";
    actions.appendChild(button("+ positive", "add as a positive example", function () { addExample(hit.chip, false); }));
    actions.appendChild(button("− negative", "add as a negative example", function () { addExample(hit.chip, true); }));
    meta.appendChild(actions);
    li.appendChild(img);
    li.appendChild(meta);
    return li;
  }

  function highlight(chip, on) {
    var layer = state.resultLayers[chip];
    if (layer && layer.setStyle) { layer.setStyle({ weight: on ? 4 : 2, fillOpacity: on ? 0.25 : 0.05 }); }
    var el = document.querySelector('.chip-card[data-chip="' + CSS.escape(chip) + '"]');
    if (el) { el.classList.toggle("active", on); }
  }

  // --- results: paged list, clustered map ---

  function renderPage() {
    var list = $("similar-list");
    list.textContent = "";
    var n = state.hits.length;
    var pages = Math.max(1, Math.ceil(n / PAGE_SIZE));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var from = state.page * PAGE_SIZE;
    var to = Math.min(n, from + PAGE_SIZE);
    state.hits.slice(from, to).forEach(function (hit, j) {
      var li = card(hit);
      var feature = state.features[from + j];
      li.addEventListener("click", function () {
        map.flyToBounds(L.geoJSON(feature).getBounds(), { maxZoom: 17, duration: 0.8 });
      });
      li.addEventListener("mouseenter", function () { highlight(hit.chip, true); });
      li.addEventListener("mouseleave", function () { highlight(hit.chip, false); });
      list.appendChild(li);
    });
    $("page-info").textContent = n ? (from + 1) + "–" + to + " of " + n : "none";
    $("page-prev").disabled = state.page === 0;
    $("page-next").disabled = state.page >= pages - 1;
    document.body.dataset.page = String(state.page);
  }

  function drawResults() {
    // screen-grid clustering at the current zoom: results whose centres share a CLUSTER_PX cell become one circle
    resultsLayer.clearLayers();
    state.resultLayers = {};
    if (!state.hits.length) { return; }
    var zoom = map.getZoom();
    var cells = {};
    var order = [];
    // only what is in view, with a margin of one view on each side (redrawn when the map moves)
    var view = map.getPixelBounds();
    var size = view.getSize();
    var minX = view.min.x - size.x, maxX = view.max.x + size.x, minY = view.min.y - size.y, maxY = view.max.y + size.y;
    state.hits.forEach(function (hit, i) {
      var pt = map.project([hit.lat, hit.lon], zoom);
      if (pt.x < minX || pt.x > maxX || pt.y < minY || pt.y > maxY) { return; }
      var key = Math.floor(pt.x / CLUSTER_PX) + ":" + Math.floor(pt.y / CLUSTER_PX);
      if (!cells[key]) { cells[key] = []; order.push(key); }
      cells[key].push(i);
    });
    var clusters = 0;
    order.forEach(function (key) {
      var members = cells[key];
      if (members.length === 1) {
        var i = members[0];
        var hit = state.hits[i];
        var layer;
        if (zoom >= FOOTPRINT_MIN_ZOOM) {
          layer = L.geoJSON(state.features[i], { style: { color: "#f0b400", weight: 2, fillOpacity: 0.05, className: "similar-cell" } });
        } else {
          layer = L.circleMarker([hit.lat, hit.lon], { radius: 6, color: "#fff", weight: 2, fillColor: "#f0b400", fillOpacity: 0.95, className: "similar-dot" });
        }
        layer.bindTooltip(String(hit.rank), { permanent: true, direction: "center", className: "rank-label" });
        layer.on("click", function (e) { L.DomEvent.stopPropagation(e); addExample(hit.chip, isNegativeClick(e)); });
        layer.on("mouseover", function () { highlight(hit.chip, true); });
        layer.on("mouseout", function () { highlight(hit.chip, false); });
        layer.addTo(resultsLayer);
        state.resultLayers[hit.chip] = layer;
        return;
      }
      clusters += 1;
      var lat = 0, lon = 0, best = Infinity;
      var bounds = L.latLngBounds([]);
      members.forEach(function (i) {
        var h = state.hits[i];
        lat += h.lat; lon += h.lon;
        best = Math.min(best, h.rank);
        bounds.extend([h.lat, h.lon]);
      });
      var label = document.createElement("span");
      label.textContent = String(members.length);
      var size = members.length < 10 ? 26 : members.length < 100 ? 32 : 38;
      var marker = L.marker([lat / members.length, lon / members.length], {
        icon: L.divIcon({ html: label, className: "result-cluster", iconSize: [size, size] }),
        title: members.length + " results (best #" + best + ")", keyboard: false,
      });
      marker.on("click", function (e) {
        L.DomEvent.stopPropagation(e);
        if (bounds.getNorthEast().equals(bounds.getSouthWest())) { map.setView(bounds.getCenter(), Math.min(map.getMaxZoom(), zoom + 3)); }
        else { map.fitBounds(bounds.pad(0.2)); }
      });
      marker.addTo(resultsLayer);
    });
    document.body.dataset.clusters = String(clusters);
    document.body.dataset.drawn = String(order.length);
  }

  function showExamplesOnMap(body) {
    positiveLayer.clearLayers();
    negativeLayer.clearLayers();
    if (!body) { return; }
    positiveLayer.addData({ type: "FeatureCollection", features: body.query.chips || [] });
    negativeLayer.addData({ type: "FeatureCollection", features: body.query.negative_chips || [] });
  }

  function showResults(body) {
    state.hits = body.results;
    state.features = body.geojson.features;
    state.page = 0;
    showExamplesOnMap(body);
    renderPage();
    drawResults();
    $("result-count").textContent = "(" + body.results.length + ")";
    var params = searchParams().toString();
    ["geojson", "csv", "parquet"].forEach(function (f) { $("export-" + f).href = "/api/similar/export?" + params + "&format=" + f; });
    $("results").hidden = false;
    document.body.dataset.results = String(body.results.length);
  }

  function clearResults() {
    state.hits = [];
    state.features = [];
    resultsLayer.clearLayers();
    state.resultLayers = {};
    showExamplesOnMap(null);
    $("similar-list").textContent = "";
    $("results").hidden = true;
    document.body.dataset.results = "0";
  }

  // --- the examples and the search ---

  function exampleItem(chip, negative) {
    var li = document.createElement("li");
    li.className = "example";
    li.dataset.chip = chip;
    li.title = chip;
    if (/\.jpg$/.test(chip)) { // a quadkey example (all its acquisitions) has no one thumbnail
      var img = document.createElement("img");
      img.alt = chip;
      img.src = "/api/chip/" + encodeURIComponent(chip) + "/thumbnail.jpg?size=96";
      li.appendChild(img);
    }
    var label = document.createElement("span");
    label.className = "label";
    label.textContent = chip.replace(/\.jpg$/, "");
    li.appendChild(label);
    li.appendChild(button("×", "remove this " + (negative ? "negative" : "positive") + " example", function () { removeExample(chip); }));
    return li;
  }

  function renderExamples() {
    [["positives", state.positives, false], ["negatives", state.negatives, true]].forEach(function (t) {
      var ul = $(t[0]);
      ul.textContent = "";
      t[1].forEach(function (chip) { ul.appendChild(exampleItem(chip, t[2])); });
    });
    $("positive-count").textContent = "(" + state.positives.length + ")";
    $("negative-count").textContent = "(" + state.negatives.length + ")";
    $("examples").hidden = !(state.positives.length || state.negatives.length);
  }

  function maxCloud() {
    // the threshold when "hide cloudy" is on: a share 0..1; null when off, NaN when not a share
    if (!$("hide-cloudy").checked) { return null; }
    var v = parseFloat($("max-cloud").value);
    return (v >= 0 && v <= 1) ? v : NaN;
  }

  function minValid() {
    if (!state.info || !state.info.min_valid) { return null; }
    var v = parseFloat($("min-valid").value);
    return (v >= 0 && v <= 1) ? v : NaN;
  }

  function searchParams() {
    var p = new URLSearchParams();
    state.positives.forEach(function (c) { p.append("positive", c); });
    state.negatives.forEach(function (c) { p.append("negative", c); });
    p.set("k", $("k").value);
    if ($("exclude-cell").checked) { p.set("exclude_same_cell", "true"); }
    var mc = maxCloud();
    if (mc !== null && !isNaN(mc)) { p.set("max_cloud", String(mc)); }
    var mv = minValid();
    if (mv !== null && !isNaN(mv)) { p.set("min_valid", String(mv)); }
    return p;
  }

  function writeUrl() {
    // the search in the query string (shareable), the view in the hash
    var q = state.positives.length || state.negatives.length ? "?" + searchParams().toString() : "";
    history.replaceState(null, "", location.pathname + q + location.hash);
  }

  function describe() {
    var p = state.positives.length, n = state.negatives.length;
    var text = p === 1 ? state.positives[0] : p + " positives";
    return n ? text + " − " + (n === 1 ? state.negatives[0] : n + " negatives") : text;
  }

  function runSearch() {
    renderExamples();
    writeUrl();
    if (state.abort) { state.abort.abort(); state.abort = null; }
    var seq = ++state.seq;
    if (!state.positives.length) {
      clearResults();
      status(state.negatives.length ? "add a positive example to search" : "no examples: click a chip to add one");
      return Promise.resolve();
    }
    var mc = maxCloud();
    if (mc !== null && isNaN(mc)) {
      status("the cloud threshold must be a share between 0 and 1 (0.1 = 10 %)", true);
      return Promise.resolve();
    }
    var mv = minValid();
    if (mv !== null && isNaN(mv)) {
      status("the valid share must be between 0 and 1 (0.5 = half the chip)", true);
      return Promise.resolve();
    }
    var ctrl = new AbortController();
    state.abort = ctrl;
    status("searching chips similar to " + describe() + "…");
    return getJSON("/api/similar?" + searchParams().toString(), { signal: ctrl.signal }).then(function (body) {
      if (seq !== state.seq) { return; } // an older answer: a newer search is on its way
      showResults(body);
      var cloudy = body.cloudy ? " (" + body.cloudy + " cloudy left out)" : "";
      status(body.results.length + " chips similar to " + describe() + cloudy);
      state.searches += 1;
      document.body.dataset.searches = String(state.searches);
    }).catch(function (err) {
      if (err.name !== "AbortError" && seq === state.seq) { status(err.message, true); }
    });
  }

  function addExample(chip, negative) {
    var to = negative ? state.negatives : state.positives;
    var other = negative ? state.positives : state.negatives;
    if (to.indexOf(chip) >= 0) {
      status(chip + " is already a " + (negative ? "negative" : "positive") + " example");
      return Promise.resolve();
    }
    var max = (state.info && state.info.max_examples) || 100;
    if (to.length >= max) {
      status("at most " + max + (negative ? " negatives" : " positives"), true);
      return Promise.resolve();
    }
    var j = other.indexOf(chip);
    if (j >= 0) { other.splice(j, 1); } // a positive clicked as a negative changes sides
    to.push(chip);
    return runSearch();
  }

  function removeExample(chip) {
    [state.positives, state.negatives].forEach(function (list) {
      var j = list.indexOf(chip);
      if (j >= 0) { list.splice(j, 1); }
    });
    return runSearch();
  }

  function clearExamples() {
    state.positives = [];
    state.negatives = [];
    return runSearch();
  }

  function restoreSearch() {
    // from the URL: positive/negative (repeatable; chip= of older links is a positive), k and the filters
    var p = new URLSearchParams(location.search);
    var pos = p.getAll("chip").concat(p.getAll("positive")).filter(function (c) { return c; });
    var neg = p.getAll("negative").filter(function (c) { return c && pos.indexOf(c) < 0; });
    state.positives = pos.filter(function (c, i) { return pos.indexOf(c) === i; });
    state.negatives = neg.filter(function (c, i) { return neg.indexOf(c) === i; });
    var k = parseInt(p.get("k"), 10);
    if (k >= 1 && k <= ((state.info && state.info.k_max) || 1000)) {
      var sel = $("k");
      if (!Array.prototype.some.call(sel.options, function (o) { return +o.value === k; })) {
        var opt = document.createElement("option");
        opt.textContent = String(k);
        sel.appendChild(opt);
      }
      sel.value = String(k);
    }
    var excl = p.get("exclude_same_cell");
    $("exclude-cell").checked = excl === "true" || excl === "1";
    var mc = p.get("max_cloud");
    $("hide-cloudy").checked = mc !== null;
    if (mc !== null) { $("max-cloud").value = mc; }
    var mv = p.get("min_valid");
    if (mv !== null) { $("min-valid").value = mv; }
    if (state.positives.length || state.negatives.length) { return runSearch(); }
    return Promise.resolve();
  }

  function writeHash() {
    var c = map.getCenter();
    history.replaceState(null, "", location.pathname + location.search + "#" + map.getZoom() + "/" + c.lat.toFixed(6) + "/" + c.lng.toFixed(6));
  }

  function readHash() {
    var m = /^#(\d{1,2})\/(-?\d+(?:\.\d+)?)\/(-?\d+(?:\.\d+)?)$/.exec(location.hash);
    return m ? { zoom: +m[1], lat: +m[2], lng: +m[3] } : null;
  }

  function fillAcquisitions(acqs) {
    var sel = $("acquisition");
    acqs.catalog_ids.forEach(function (a) {
      var opt = document.createElement("option");
      opt.value = a.catalog_id;
      opt.textContent = a.date + " · " + a.catalog_id + " (" + a.cells.length + (a.cells.length === 1 ? " cell)" : " cells)");
      sel.appendChild(opt);
    });
    sel.addEventListener("change", function () {
      state.acquisition = sel.value;
      setImagery();
      loadGrid();
      loadMasks();
    });
  }

  // --- ARD mask outlines: one layer per kind, loaded for the view while its box is ticked ---

  function showMaskNotes() {
    var lines = [];
    Object.keys(state.masks).forEach(function (kind) {
      var m = state.masks[kind];
      if (m.on) { lines = lines.concat(m.problems, m.notes); }
    });
    var el = $("mask-notes");
    el.textContent = lines.join("\n");
    el.hidden = !lines.length;
    el.className = Object.keys(state.masks).some(function (k) { return state.masks[k].on && state.masks[k].problems.length; }) ? "hint error" : "hint muted";
  }

  function loadMask(kind) {
    var m = state.masks[kind];
    if (m.abort) { m.abort.abort(); m.abort = null; }
    if (!m.on || !state.tilejson) { m.layer.clearLayers(); return; }
    var b = map.getBounds().pad(MASK_PAD);
    var box = [Math.max(-180, b.getWest()), Math.max(-90, b.getSouth()), Math.min(180, b.getEast()), Math.min(90, b.getNorth())];
    var bbox = box.map(function (v) { return v.toFixed(6); }).join(",");
    var ctrl = new AbortController();
    m.abort = ctrl;
    getJSON("/api/masks?bbox=" + bbox + "&kind=" + encodeURIComponent(kind) + acqQuery("&"), { signal: ctrl.signal }).then(function (fc) {
      m.layer.clearLayers();
      m.layer.addData(fc);
      m.notes = fc.notes || [];
      m.problems = fc.problems || [];
      document.body.dataset["mask" + kind.replace(/_/g, "")] = String(fc.features.length);
      showMaskNotes();
    }).catch(function (err) {
      if (err.name !== "AbortError") { m.layer.clearLayers(); m.problems = [kind.replace(/_/g, " ") + " outlines: " + err.message]; showMaskNotes(); }
    });
  }

  function loadMasks() { Object.keys(state.masks).forEach(loadMask); }

  Array.prototype.forEach.call(document.querySelectorAll("#mask-layers input[data-mask]"), function (box) {
    var kind = box.dataset.mask;
    var m = state.masks[kind] = {
      on: false, abort: null, notes: [], problems: [],
      layer: L.geoJSON(null, {
        style: { color: MASK_COLOURS[kind] || "#ff00ff", weight: 2, opacity: 0.9, fill: false, interactive: false, className: "mask-outline mask-" + kind },
      }),
    };
    box.checked = false; // off by default, also after a reload that keeps form state
    box.addEventListener("change", function () {
      m.on = box.checked;
      if (m.on) { m.layer.addTo(map); } else { map.removeLayer(m.layer); }
      loadMask(kind);
      showMaskNotes();
    });
  });

  // --- changes: the best-ranked changes in view, outlined by score; a click opens the before/after view ---

  // its own pane above the grid and the results: a click on a change reaches it (and stops there), not a grid cell
  map.createPane("changes").style.zIndex = 450;

  function scoreColour(score) {
    if (score === null || score === undefined || isNaN(score)) { return "#9aa3ab"; }
    var t = Math.min(1, Math.max(0, score)) * (CHANGE_RAMP.length - 1);
    var i = Math.min(CHANGE_RAMP.length - 2, Math.floor(t));
    var f = t - i;
    var c = CHANGE_RAMP[i].map(function (v, k) { return Math.round(v + (CHANGE_RAMP[i + 1][k] - v) * f); });
    return "rgb(" + c.join(",") + ")";
  }

  function fixed(v, digits) { return v === null || v === undefined ? "–" : v.toFixed(digits); }

  function changeTip(p) {
    // a DOM node, not a string: Leaflet would write a string as HTML
    var el = document.createElement("div");
    var head = document.createElement("strong");
    head.textContent = "#" + p.rank + "  score " + fixed(p.score, 3);
    var dates = document.createElement("div");
    dates.textContent = (p.before_date || "?") + " → " + (p.after_date || "?");
    el.appendChild(head);
    el.appendChild(dates);
    return el;
  }

  var changeLayer = L.geoJSON(null, {
    pane: "changes",
    style: function (f) {
      var c = scoreColour(f.properties.score);
      return { color: c, fillColor: c, weight: 3, opacity: 0.95, fillOpacity: 0.08, className: "change-outline" };
    },
    onEachFeature: function (feature, layer) {
      layer.bindTooltip(changeTip(feature.properties), { sticky: true, className: "change-tip" });
      layer.on("click", function (e) {
        L.DomEvent.stopPropagation(e); // not a search example
        openChange(feature.properties);
      });
    },
  });

  function loadChanges() {
    var c = state.changes;
    if (c.abort) { c.abort.abort(); c.abort = null; }
    if (!c.on) { changeLayer.clearLayers(); return; }
    var b = map.getBounds();
    var box = [Math.max(-180, b.getWest()), Math.max(-90, b.getSouth()), Math.min(180, b.getEast()), Math.min(90, b.getNorth())];
    var bbox = box.map(function (v) { return v.toFixed(6); }).join(",");
    var ctrl = new AbortController();
    c.abort = ctrl;
    getJSON("/api/changes?bbox=" + bbox + "&top=" + CHANGE_TOP, { signal: ctrl.signal }).then(function (fc) {
      changeLayer.clearLayers();
      changeLayer.addData(fc);
      $("change-notes").textContent = fc.count ? (fc.truncated ? "the " + fc.count + " most changed of " + fc.in_view + " in view" : fc.count + " in view") : "none in view";
      $("change-notes").className = "hint muted";
      document.body.dataset.changes = String(fc.count);
    }).catch(function (err) {
      if (err.name !== "AbortError") {
        changeLayer.clearLayers();
        $("change-notes").textContent = "changes: " + err.message;
        $("change-notes").className = "hint error";
      }
    });
  }

  function acquisitionLabel(a) { return (a.acquisition_date || "date unknown") + " · " + (a.catalog_id || a.chip); }

  function thumbUrl(chip) { return "/api/chip/" + encodeURIComponent(chip) + "/thumbnail.jpg?size=" + CHANGE_THUMB; }

  function setClip() {
    var swipe = $("change-swipe").checked;
    $("change-images").classList.toggle("swipe", swipe);
    $("change-slider").hidden = !swipe;
    // the after image shows right of the slider, the before image left of it
    $("change-after-img").style.clipPath = swipe ? "inset(0 0 0 " + $("change-slider").value + "%)" : "";
  }

  function showPair() {
    var before = $("change-before").value, after = $("change-after").value;
    var c = state.changes;
    [["before", before], ["after", after]].forEach(function (t) {
      var img = $("change-" + t[0] + "-img");
      img.src = thumbUrl(t[1]);
      img.alt = t[1];
      var sel = $("change-" + t[0]);
      $("change-" + t[0] + "-cap").textContent = sel.options[sel.selectedIndex] ? sel.options[sel.selectedIndex].textContent : t[1];
    });
    var scored = c.pairs.filter(function (p) { return p.before_chip === before && p.after_chip === after; })[0];
    var p = c.current;
    if (scored && p && scored.rank === p.rank) {
      $("change-figures").textContent = "the pair scored: rank #" + p.rank + ", score " + fixed(p.score, 3) +
        " · embedding distance " + fixed(p.embedding_distance, 3) + " · pixel change " + fixed(p.pixel_change, 3) +
        " · changed area " + shareText("", p.changed_area).trim() + " · compared " + shareText("", p.compared_fraction).trim();
    } else if (scored) {
      $("change-figures").textContent = "a pair scored at rank #" + scored.rank + ", score " + fixed(scored.score, 3);
    } else {
      $("change-figures").textContent = "a pair the changes file did not score";
    }
    setClip();
  }

  function fillPicks(acqs, before, after) {
    [["change-before", before], ["change-after", after]].forEach(function (t) {
      var sel = $(t[0]);
      sel.textContent = "";
      acqs.forEach(function (a) {
        var opt = document.createElement("option");
        opt.value = a.chip;
        opt.textContent = acquisitionLabel(a);
        sel.appendChild(opt);
      });
      sel.value = t[1];
    });
  }

  function openChange(p) {
    var c = state.changes;
    var seq = ++c.seq;
    c.current = p;
    c.pairs = [{ rank: p.rank, score: p.score, before_chip: p.before_chip, after_chip: p.after_chip }];
    $("change-title").textContent = "#" + p.rank + " · " + p.quadkey + " (zone " + p.zone + ")";
    // the compared pair at once; every acquisition of the chip when the list comes
    fillPicks([
      { chip: p.before_chip, catalog_id: p.before_catalog_id, acquisition_date: p.before_date },
      { chip: p.after_chip, catalog_id: p.after_catalog_id, acquisition_date: p.after_date },
    ], p.before_chip, p.after_chip);
    showPair();
    $("change-view").hidden = false;
    document.body.dataset.changeOpen = String(p.rank);
    var url = "/api/changes/acquisitions?quadkey=" + encodeURIComponent(p.quadkey) + "&zone=" + encodeURIComponent(p.zone);
    return getJSON(url).then(function (body) {
      if (seq !== c.seq) { return; }
      c.pairs = body.changes;
      fillPicks(body.acquisitions, p.before_chip, p.after_chip);
      showPair();
      document.body.dataset.changeAcquisitions = String(body.acquisitions.length);
    }).catch(function (err) {
      if (seq === c.seq) { $("change-figures").textContent = "acquisitions: " + err.message; }
    });
  }

  function closeChange() {
    state.changes.seq += 1;
    $("change-view").hidden = true;
    delete document.body.dataset.changeOpen;
  }

  $("show-changes").checked = false; // off by default, also after a reload that keeps form state
  $("show-changes").addEventListener("change", function () {
    state.changes.on = $("show-changes").checked;
    if (state.changes.on) { changeLayer.addTo(map); } else { map.removeLayer(changeLayer); }
    loadChanges();
  });
  $("change-before").addEventListener("change", showPair);
  $("change-after").addEventListener("change", showPair);
  $("change-swipe").addEventListener("change", setClip);
  $("change-slider").addEventListener("input", setClip);
  $("change-close").addEventListener("click", closeChange);
  document.addEventListener("keydown", function (e) { if (e.key === "Escape" && !$("change-view").hidden) { closeChange(); } });

  map.on("click", function (e) {
    // a click on the imagery outside the drawn grid (zoomed out, or before the grid loads): the chip under it
    if (!state.info || !state.info.chips) { return; }
    var negative = isNegativeClick(e);
    var url = "/api/chips/at?lon=" + e.latlng.lng.toFixed(7) + "&lat=" + e.latlng.lat.toFixed(7) + acqQuery("&");
    getJSON(url).then(function (f) { addExample(f.properties.chip, negative); }).catch(function (err) { status(err.message, true); });
  });

  Promise.all([getJSON("/api/info"), getJSON("/tilejson.json"), getJSON("/api/acquisitions")]).then(function (r) {
    state.info = r[0];
    state.tilejson = r[1];
    fillAcquisitions(r[2]);
    $("min-valid-box").hidden = !state.info.min_valid;
    $("min-valid").value = state.info.min_valid_default === null || state.info.min_valid_default === undefined ? "0" : String(state.info.min_valid_default);
    var tj = state.tilejson;
    map.setMinZoom(state.info.basemap ? 0 : tj.minzoom);
    var view = readHash();
    if (view) {
      map.setView([view.lat, view.lng], view.zoom);
    } else {
      map.fitBounds([[tj.bounds[1], tj.bounds[0]], [tj.bounds[3], tj.bounds[2]]]);
    }
    setBasemap();
    setImagery();
    map.on("moveend", function () { loadGrid(); loadMasks(); loadChanges(); writeHash(); drawResults(); });
    var ch = state.info.changes;
    $("change-layer").hidden = !ch;
    if (ch) {
      $("change-notes").textContent = ch.n.toLocaleString() + " changes" + (ch.method ? " (" + ch.method + ")" : "") + " from " + ch.file;
    }
    loadGrid();
    var idx = state.info.index;
    status(idx ? (state.info.chips.toLocaleString() + " chips indexed (" + idx.kind + ")") : "no index loaded");
    document.body.dataset.ready = "1";
    if (idx) { restoreSearch(); }
  }).catch(function (err) { status("could not load the viewer: " + err.message, true); });

  function rerun() { if (state.positives.length) { runSearch(); } else { writeUrl(); } }
  $("k").addEventListener("change", rerun);
  $("exclude-cell").addEventListener("change", rerun);
  $("hide-cloudy").addEventListener("change", rerun);
  $("max-cloud").addEventListener("change", function () { if ($("hide-cloudy").checked) { rerun(); } });
  $("min-valid").addEventListener("change", rerun);
  $("clear-examples").addEventListener("click", clearExamples);
  $("page-prev").addEventListener("click", function () { state.page -= 1; renderPage(); $("results").scrollIntoView(); });
  $("page-next").addEventListener("click", function () { state.page += 1; renderPage(); $("results").scrollIntoView(); });
})();
