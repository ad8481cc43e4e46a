// imagesim viewer: imagery tiles, the chip grid, similar-chip queries, ARD mask outlines.
// Plain ES2017, no build step; every string from the API goes through textContent (no innerHTML).
(function () {
  "use strict";

  var GRID_MIN_ZOOM = 14;
  var EMPTY_TILE = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
  var $ = function (id) { return document.getElementById(id); };
  // outline colours of the ARD mask layers (style.css has the same ones for the legend swatches)
  var MASK_COLOURS = { cloud: "#ffffff", cloud_shadow: "#b36bff", terrain_shadow: "#ff8c1a", water: "#1e90ff", vegetation: "#39d353" };
  var MASK_PAD = 0.2; // ask for a bit more than the view: the clip edges stay off screen while panning

  var state = { info: null, tilejson: null, acquisition: "", query: null, gridAbort: null, resultLayers: {}, masks: {} };

  var map = L.map("map", { zoomControl: true, maxZoom: 22, worldCopyJump: false });
  L.control.scale({ imperial: false }).addTo(map);
  var imagery = null;
  var gridLayer = L.geoJSON(null, {
    style: { color: "#7fd3ff", weight: 1, opacity: 0.7, fillOpacity: 0.0, className: "chip-cell" },
    onEachFeature: function (feature, layer) {
      layer.on("click", function () { querySimilar(feature.properties.chip); });
      layer.on("mouseover", function () { layer.setStyle({ fillOpacity: 0.15, fillColor: "#7fd3ff" }); });
      layer.on("mouseout", function () { layer.setStyle({ fillOpacity: 0.0 }); });
    },
  }).addTo(map);
  var resultsLayer = L.featureGroup().addTo(map);
  var queryLayer = L.geoJSON(null, { style: { color: "#ff3b30", weight: 3, fillOpacity: 0.1, interactive: false } }).addTo(map);

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

  function acqQuery(prefix) {
    return state.acquisition ? prefix + "acquisition=" + encodeURIComponent(state.acquisition) : "";
  }

  function setImagery() {
    if (imagery) { map.removeLayer(imagery); }
    var tj = state.tilejson;
    imagery = L.tileLayer("/tiles/{z}/{x}/{y}.jpg" + acqQuery("?"), {
      minZoom: tj.minzoom, maxNativeZoom: tj.maxzoom, maxZoom: 22, tileSize: 256,
      errorTileUrl: EMPTY_TILE, attribution: tj.attribution,
      bounds: L.latLngBounds([tj.bounds[1], tj.bounds[0]], [tj.bounds[3], tj.bounds[2]]).pad(0.05),
    });
    imagery.addTo(map);
    imagery.bringToBack();
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

  function cloudText(fraction) {
    if (fraction === null || fraction === undefined) { return "cloud –"; }
    var pct = fraction * 100;
    return "cloud " + (pct > 0 && pct < 1 ? pct.toFixed(1) : String(Math.round(pct))) + " %";
  }

  function card(hit, isQuery) {
    var li = document.createElement("li");
    li.className = "chip-card";
    li.dataset.chip = hit.chip;
    var img = document.createElement("img");
    img.loading = "lazy";
    img.alt = hit.chip;
    img.src = hit.thumbnail;
    var meta = document.createElement("div");
    meta.className = "meta";
    var score = document.createElement("div");
    score.className = "score";
    score.textContent = isQuery ? "query" : ("#" + hit.rank + "  score " + hit.score.toFixed(3));
    var name = document.createElement("div");
    name.className = "name";
    name.textContent = hit.chip;
    var labels = document.createElement("div");
    labels.className = "labels";
    labels.textContent = (hit.labels && hit.labels.length) ? hit.labels.join(", ") : "";
    meta.appendChild(score);
    meta.appendChild(name);
    if (!isQuery && hit.lon !== undefined) {
      var where = document.createElement("div");
      where.className = "muted";
      where.textContent = hit.lat.toFixed(5) + ", " + hit.lon.toFixed(5);
      meta.appendChild(where);
    }
    var cloud = document.createElement("div");
    cloud.className = "cloud";
    cloud.textContent = cloudText(hit.cloud_fraction);
    meta.appendChild(cloud);
    meta.appendChild(labels);
    li.appendChild(img);
    li.appendChild(meta);
    return li;
  }

  function highlight(chip, on) {
    var layer = state.resultLayers[chip];
    if (layer) { layer.setStyle({ weight: on ? 4 : 2, fillOpacity: on ? 0.25 : 0.05 }); }
    var el = document.querySelector('.chip-card[data-chip="' + CSS.escape(chip) + '"]');
    if (el) { el.classList.toggle("active", on); }
  }

  function showResults(body) {
    var list = $("similar-list");
    list.textContent = "";
    resultsLayer.clearLayers();
    queryLayer.clearLayers();
    state.resultLayers = {};
    var q = body.query.chips;
    queryLayer.addData({ type: "FeatureCollection", features: q });
    var qbox = $("query-chip");
    qbox.textContent = "";
    q.forEach(function (f) {
      var p = f.properties;
      qbox.appendChild(card({ chip: p.chip, thumbnail: p.thumbnail, labels: p.labels, cloud_fraction: p.cloud_fraction }, true));
    });
    $("query").hidden = false;

    body.geojson.features.forEach(function (f, i) {
      var hit = body.results[i];
      var layer = L.geoJSON(f, { style: { color: "#f0b400", weight: 2, fillOpacity: 0.05, className: "similar-cell" } });
      layer.bindTooltip(String(hit.rank), { permanent: true, direction: "center", className: "rank-label" });
      layer.on("click", function () { querySimilar(hit.chip); });
      layer.on("mouseover", function () { highlight(hit.chip, true); });
      layer.on("mouseout", function () { highlight(hit.chip, false); });
      layer.addTo(resultsLayer);
      state.resultLayers[hit.chip] = layer;
      var li = card(hit, false);
      li.addEventListener("click", function () { map.flyToBounds(layer.getBounds(), { maxZoom: 17, duration: 0.8 }); });
      li.addEventListener("mouseenter", function () { highlight(hit.chip, true); });
      li.addEventListener("mouseleave", function () { highlight(hit.chip, false); });
      list.appendChild(li);
    });
    $("result-count").textContent = "(" + body.results.length + ")";
    $("results").hidden = false;
    document.body.dataset.results = String(body.results.length);
  }

  function maxCloud() {
    // the threshold when "hide cloudy" is on: a share 0..1; null when off, NaN when not a share
    if (!$("hide-cloudy").checked) { return null; }
    var v = parseFloat($("max-cloud").value);
    return (v >= 0 && v <= 1) ? v : NaN;
  }

  function querySimilar(chip) {
    state.query = chip;
    var k = $("k").value;
    var mc = maxCloud();
    if (mc !== null && isNaN(mc)) {
      status("the cloud threshold must be a share between 0 and 1 (0.1 = 10 %)", true);
      return Promise.resolve();
    }
    var url = "/api/similar?chip=" + encodeURIComponent(chip) + "&k=" + encodeURIComponent(k) +
      ($("exclude-cell").checked ? "&exclude_same_cell=true" : "") +
      (mc !== null ? "&max_cloud=" + encodeURIComponent(String(mc)) : "");
    status("searching chips similar to " + chip + "…");
    return getJSON(url).then(function (body) {
      showResults(body);
      var cloudy = body.cloudy ? " (" + body.cloudy + " cloudy left out)" : "";
      status(body.results.length + " chips similar to " + chip + cloudy);
      var params = new URLSearchParams(location.search);
      params.set("chip", chip);
      history.replaceState(null, "", "?" + params.toString() + location.hash);
    }).catch(function (err) { status(err.message, true); });
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

  Promise.all([getJSON("/api/info"), getJSON("/tilejson.json"), getJSON("/api/acquisitions")]).then(function (r) {
    state.info = r[0];
    state.tilejson = r[1];
    fillAcquisitions(r[2]);
    var tj = state.tilejson;
    map.setMinZoom(tj.minzoom);
    var view = readHash();
    if (view) {
      map.setView([view.lat, view.lng], view.zoom);
    } else {
      map.fitBounds([[tj.bounds[1], tj.bounds[0]], [tj.bounds[3], tj.bounds[2]]]);
    }
    setImagery();
    map.on("moveend", function () { loadGrid(); loadMasks(); writeHash(); });
    loadGrid();
    var idx = state.info.index;
    status(idx ? (state.info.chips.toLocaleString() + " chips indexed (" + idx.kind + ")") : "no index loaded");
    document.body.dataset.ready = "1";
    var chip = new URLSearchParams(location.search).get("chip");
    if (chip) { querySimilar(chip); }
  }).catch(function (err) { status("could not load the viewer: " + err.message, true); });

  $("k").addEventListener("change", function () { if (state.query) { querySimilar(state.query); } });
  $("exclude-cell").addEventListener("change", function () { if (state.query) { querySimilar(state.query); } });
  $("hide-cloudy").addEventListener("change", function () { if (state.query) { querySimilar(state.query); } });
  $("max-cloud").addEventListener("change", function () { if (state.query && $("hide-cloudy").checked) { querySimilar(state.query); } });
})();
