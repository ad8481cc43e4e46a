"""`imagesim labels`: bitset encodings (Rust) against numpy, the taxonomy, the grid join on hand-made
edge cases, the sample scene against an independent oracle (pyosmium's own area assembly and a
brute-force shapely join), a real extract, the split and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import shapely
from typer.testing import CliRunner

from imagesim import _imagesim, geoparquet, grid
from imagesim.artefacts import read_labels
from imagesim.errors import (
    ImagesimFileNotFoundError,
    InvalidArgumentError,
    LabelInputError,
    OutputExistsError,
    TaxonomyError,
)
from imagesim.labels.build import LabelSettings, build_labels, label_cell
from imagesim.labels.geometry import is_area
from imagesim.labels.join import local_index
from imagesim.labels.taxonomy import load_taxonomy

CELL = "120020223032"  # zone 10: x 550,000-555,000, y 4,180,000-4,185,000
WEST, NORTH, S = 550_000.0, 4_185_000.0, 156.25  # z17 chips: 32 x 32 per cell


# --------------------------------------------------------------------------------------------
# Bitsets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [1, 13, 63, 64, 65, 130])
def test_bitsets_round_trip_and_match_numpy_packbits(n_classes):
    rng = np.random.default_rng(n_classes)
    dense = (rng.random((257, n_classes)) < 0.3).astype(np.uint8)
    dense[5] = 0
    rows, cols = np.nonzero(dense)
    ids = cols.astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum(dense.sum(axis=1))]).astype(np.int64)
    bits = _imagesim.pack_labels(ids, offsets, n_classes)
    words = _imagesim.label_words(n_classes)
    assert bits.shape == (257, words) and bits.dtype == np.uint64

    packed = np.packbits(dense, axis=1, bitorder="little")
    expected = np.zeros((257, words * 8), np.uint8)
    expected[:, : packed.shape[1]] = packed
    assert np.array_equal(bits.astype("<u8").view(np.uint8).reshape(257, -1), expected)

    back_ids, back_offsets = _imagesim.unpack_labels(bits, n_classes)
    assert np.array_equal(back_ids, ids) and np.array_equal(back_offsets, offsets)
    assert np.array_equal(_imagesim.dense_labels(bits, n_classes), dense)
    co = _imagesim.label_cooccurrence(bits, n_classes)
    assert np.array_equal(co, dense.T.astype(np.uint64) @ dense.astype(np.uint64))


def test_bitset_errors_are_typed():
    with pytest.raises(InvalidArgumentError, match="not below the number of classes"):
        _imagesim.pack_labels(np.array([13], np.uint32), np.array([0, 1], np.int64), 13)
    with pytest.raises(InvalidArgumentError, match="offsets"):
        _imagesim.pack_labels(np.array([1], np.uint32), np.array([0, 2], np.int64), 13)
    with pytest.raises(InvalidArgumentError, match="beyond class"):
        _imagesim.unpack_labels(np.array([[1 << 20]], np.uint64), 13)
    with pytest.raises(InvalidArgumentError, match="words per row"):
        _imagesim.dense_labels(np.zeros((2, 2), np.uint64), 13)


# --------------------------------------------------------------------------------------------
# Taxonomy
# --------------------------------------------------------------------------------------------


def test_default_taxonomy_has_thirteen_documented_classes():
    tax = load_taxonomy()
    assert tax.names == [
        "building",
        "road",
        "water",
        "forest",
        "grass",
        "farmland",
        "residential",
        "industrial",
        "parking",
        "railway",
        "sports_pitch",
        "scrub",
        "bare_ground",
    ]
    by = {c.name: c for c in tax.classes}
    assert by["road"].line_buffer_m > 0 and by["building"].point_buffer_m > 0 and by["forest"].min_share > 0
    assert [c.name for c in tax.classes_for({"landuse": "reservoir", "natural": "water"})] == ["water"]
    assert [c.name for c in tax.classes_for({"natural": "wood"})] == ["forest"]
    assert tax.classes_for({"highway": "primary", "tunnel": "yes"}) == []
    assert tax.classes_for({"highway": "footway"}) == []
    assert tax.classes_for({"building": "no"}) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[class]]\nname = 'a'\nmatch = {", "not valid TOML"),
        ("version = 1", "no \\[\\[class\\]\\]"),
        ("[[class]]\nname = 'a'\nmatch = { a = '*' }\ncolour = 'red'", "unknown key"),
        ("[[class]]\nname = 'a'\nmatch = {}", "at least one tag"),
        ("[[class]]\nname = 'a'\nmatch = { a = '*' }\n[[class]]\nname = 'a'\nmatch = { b = '*' }", "defined twice"),
        ("[[class]]\nname = 'a'\nmatch = { a = '*' }\nmin_share = 2", "0..1"),
        ("[[class]]\nname = 'a'\nmatch = { a = 3 }", "list of values"),
        ("[[class]]\nname = 'a'\nmatch = { a = '*' }\npolygons = false", "no geometry counts"),
    ],
)
def test_bad_taxonomies_are_rejected_with_the_reason(tmp_path, text, message):
    path = tmp_path / "tax.toml"
    path.write_text(text)
    with pytest.raises(TaxonomyError, match=message) as info:
        load_taxonomy(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImagesimFileNotFoundError):
        load_taxonomy(tmp_path / "missing.toml")


def test_closed_way_area_convention():
    assert is_area({"building": "yes"}) and is_area({"landuse": "forest"}) and is_area({"highway": "pedestrian", "area": "yes"})
    assert not is_area({"highway": "residential"}) and not is_area({"natural": "tree_row"})
    assert not is_area({"building": "yes", "area": "no"}) and not is_area({"waterway": "stream"})
    assert is_area({"waterway": "riverbank"})


# --------------------------------------------------------------------------------------------
# Hand-made edge cases in one cell
# --------------------------------------------------------------------------------------------


class Scene:
    """Build an osm_data.json for CELL from UTM coordinates."""

    def __init__(self) -> None:
        from pyproj import Transformer

        self.to_ll = Transformer.from_crs(32610, 4326, always_xy=True)
        self.doc = {"quadkey": CELL, "nodes": [], "ways": [], "relations": []}
        self.next_id = 1

    def _geom(self, coords):
        lon, lat = self.to_ll.transform([c[0] for c in coords], [c[1] for c in coords])
        return [{"lat": la, "lon": lo} for lo, la in zip(lon, lat)]

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def node(self, x, y, tags):
        (g,) = self._geom([(x, y)])
        self.doc["nodes"].append({"type": "node", "id": self._id(), "lat": g["lat"], "lon": g["lon"], "tags": tags})

    def way(self, coords, tags, closed=True):
        coords = list(coords) + ([coords[0]] if closed else [])
        refs = [self._id() for _ in coords]
        if closed:
            refs[-1] = refs[0]
        self.doc["ways"].append({"type": "way", "id": self._id(), "nodes": refs, "geometry": self._geom(coords), "tags": tags})

    def multipolygon(self, rings, tags):
        members = [{"type": "way", "ref": self._id(), "role": role, "geometry": self._geom(list(r) + [r[0]])} for role, r in rings]
        self.doc["relations"].append({"type": "relation", "id": self._id(), "members": members, "tags": {"type": "multipolygon", **tags}})


def chip_box(col, row, c1=None, r1=None):
    """UTM ring of chips col..c1, row..r1 (inclusive)."""
    c1, r1 = c1 if c1 is not None else col, r1 if r1 is not None else row
    x0, x1 = WEST + col * S, WEST + (c1 + 1) * S
    y1, y0 = NORTH - row * S, NORTH - (r1 + 1) * S
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def labels_of(doc, taxonomy=None):
    chip, cls, report = label_cell(doc, taxonomy or load_taxonomy(), 10, CELL, 17)
    out: dict[tuple[int, int], set[str]] = {}
    names = (taxonomy or load_taxonomy()).names
    for c, k in zip(chip.tolist(), cls.tolist()):
        out.setdefault((c % 32, c // 32), set()).add(names[k])
    return out, report


def test_feature_exactly_on_a_chip_edge_labels_one_side_only():
    sc = Scene()
    # East edge of the building on the col 0 / col 1 boundary.
    sc.way([(WEST + 100, NORTH - 100), (WEST + S, NORTH - 100), (WEST + S, NORTH - 50), (WEST + 100, NORTH - 50)], {"building": "yes"})
    # A building across the col 0 / col 1 boundary of row 2.
    y = NORTH - 2.5 * S
    sc.way([(WEST + S - 5, y), (WEST + S + 5, y), (WEST + S + 5, y + 8), (WEST + S - 5, y + 8)], {"building": "house"})
    got, _ = labels_of(sc.doc)
    assert got == {(0, 0): {"building"}, (0, 2): {"building"}, (1, 2): {"building"}}


def test_multipolygon_hole_covering_a_chip_and_an_island_in_a_hole():
    sc = Scene()
    sc.multipolygon([("outer", chip_box(4, 4, 7, 7)), ("inner", chip_box(5, 5))], {"landuse": "forest"})
    hole = chip_box(11, 11)
    island = [
        (hole[0][0] + 40, hole[0][1] + 40),
        (hole[0][0] + 110, hole[0][1] + 40),
        (hole[0][0] + 110, hole[0][1] + 110),
        (hole[0][0] + 40, hole[0][1] + 110),
    ]
    sc.multipolygon([("outer", chip_box(10, 10, 12, 12)), ("inner", hole), ("outer", island)], {"natural": "wood"})
    got, report = labels_of(sc.doc)
    first = {(c, r) for c in range(4, 8) for r in range(4, 8)} - {(5, 5)}
    second = {(c, r) for c in range(10, 13) for r in range(10, 13)}  # (11, 11) through the island
    assert set(got) == first | second
    assert all(v == {"forest"} for v in got.values())
    assert report.used == 2 and not report.dropped


def test_min_share_counts_the_union_of_a_class():
    sc = Scene()
    x, y = WEST + 20 * S, NORTH - 21 * S  # south-west corner of chip (20, 20)
    sc.way([(x + 10, y + 10), (x + 25, y + 10), (x + 25, y + 25), (x + 10, y + 25)], {"landuse": "farmland"})  # 0.9 %: no
    x2 = WEST + 22 * S
    sc.way([(x2 + 10, y + 10), (x2 + 40, y + 10), (x2 + 40, y + 40), (x2 + 10, y + 40)], {"landuse": "farmland"})  # 3.7 %
    # Chip (24, 20): two overlapping 20 x 20 m fields (1.6 % each, union 2.6 %) and two identical ones in (26, 20)
    # (union 1.6 %: counted once, so no label).
    x3, x4 = WEST + 24 * S, WEST + 26 * S
    for dx in (0, 10):
        sc.way([(x3 + 10 + dx, y + 10), (x3 + 30 + dx, y + 10), (x3 + 30 + dx, y + 30), (x3 + 10 + dx, y + 30)], {"landuse": "farmland"})
        sc.way([(x4 + 10, y + 10), (x4 + 30, y + 10), (x4 + 30, y + 30), (x4 + 10, y + 30)], {"landuse": "orchard"})
    got, _ = labels_of(sc.doc)
    assert got == {(22, 20): {"farmland"}, (24, 20): {"farmland"}}


def test_points_and_lines_count_within_their_buffer():
    sc = Scene()
    edge = WEST + 21 * S  # col 20 / col 21 boundary
    sc.node(edge - 2, NORTH - 20.5 * S, {"building": "yes"})  # 5 m buffer reaches col 21
    sc.node(edge - 10, NORTH - 22.5 * S, {"building": "yes"})  # does not
    sc.node(edge - 10, NORTH - 24.5 * S, {"amenity": "parking"})  # parking points do not count at all
    row_edge = NORTH - 30 * S  # row 29 / row 30 boundary
    sc.way([(WEST + 25.5 * S, row_edge), (WEST + 27.5 * S, row_edge)], {"highway": "residential"}, closed=False)
    sc.way([(WEST + 2.5 * S, NORTH - 28.5 * S), (WEST + 2.5 * S, NORTH - 27.5 * S)], {"highway": "primary", "tunnel": "yes"}, closed=False)
    got, _ = labels_of(sc.doc)
    roads = {(c, r) for c in (25, 26, 27) for r in (29, 30)}
    assert got == {(20, 20): {"building"}, (21, 20): {"building"}, (20, 22): {"building"}} | {k: {"road"} for k in roads}


def test_empty_cell_and_broken_geometry_are_reported_not_raised():
    sc = Scene()
    assert labels_of(sc.doc)[0] == {}
    # A bow-tie building (self-intersecting) is repaired; a way with a missing node is dropped.
    x, y = WEST + 3 * S + 20, NORTH - 3 * S - 60
    sc.way([(x, y), (x + 40, y + 40), (x + 40, y), (x, y + 40)], {"building": "yes"})
    sc.way([(WEST + 5, NORTH - 5), (WEST + 30, NORTH - 5), (WEST + 30, NORTH - 30)], {"building": "yes"})
    sc.doc["ways"][-1]["geometry"][1] = None
    got, report = labels_of(sc.doc)
    assert got == {(3, 3): {"building"}}
    assert report.repaired == 1
    assert report.dropped["way with nodes missing from the data"] == 1


def test_local_index_matches_grid_children():
    kids = grid.children(CELL, 17)
    idx = local_index(kids)
    assert sorted(idx.tolist()) == list(range(1024))
    for qk, i in zip(kids[:50], idx[:50].tolist()):
        west, _s, _e, north = grid.bounds(qk)
        assert (round((west - WEST) / S), round((NORTH - north) / S)) == (i % 32, i // 32)


# --------------------------------------------------------------------------------------------
# The sample scene, end to end, against an independent oracle
# --------------------------------------------------------------------------------------------


def chip_and_import(sample, base: Path) -> tuple[Path, Path]:
    """The sample chipped into ``base/chips`` and its OSM imported into a separate tree ``base/ard``."""
    from imagesim.imagery.chip import ChipSettings, run_chip
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm

    chips = base / "chips"
    run_chip(sample.root, chips, ChipSettings(zoom=17))
    osm_root = base / "ard"
    cells = find_cells(sample.root)
    for cell in cells:
        cell.folder(osm_root).mkdir(parents=True)
    import_osm(sample.osm_pbf, osm_root, cells)
    return chips, osm_root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, small_sample):
    """Chips of the small sample, its OSM imported into a separate tree, labels built (partial included)."""
    chips, osm_root = chip_and_import(small_sample, tmp_path_factory.mktemp("labels"))
    summary = build_labels(chips, osm_root, LabelSettings(include=("partial",)))
    return summary, chips, osm_root


def oracle(pbf: Path, taxonomy, quadkeys: list[str], epsg: int, bbox=(-180, -90, 180, 90)) -> dict[str, set[int]]:
    """Labels by brute force: pyosmium assembles areas, shapely buffers and intersects every chip
    (features outside the WGS84 ``bbox`` are skipped up front, for speed)."""
    import osmium
    from pyproj import Transformer

    wkb = osmium.geom.WKBFactory()
    feats: dict[int, list] = {c.id: [] for c in taxonomy.classes}
    west, south, east, north = bbox
    for o in osmium.FileProcessor(str(pbf)).with_locations().with_areas():
        tags = dict(o.tags)
        if not tags or not taxonomy.classes_for(tags):
            continue
        if o.is_area():
            if o.from_way() and not is_area(tags):
                continue  # libosmium makes areas of all closed ways; OSM's convention says line
            geom, kind = shapely.from_wkb(wkb.create_multipolygon(o)), "area"
        elif o.is_way():
            if o.is_closed() and is_area(tags):
                continue  # the area object stands for it
            geom, kind = shapely.from_wkb(wkb.create_linestring(o)), "line"
        elif o.is_node():
            geom, kind = shapely.from_wkb(wkb.create_point(o)), "point"
        else:
            continue
        if not shapely.intersects(geom, shapely.box(west, south, east, north)):
            continue
        for c in taxonomy.classes_for(tags):
            feats[c.id].append((geom, kind))
    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    project = lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))  # noqa: E731
    shapes: dict[int, np.ndarray] = {}
    for c in taxonomy.classes:
        out = []
        for geom, kind in feats[c.id]:
            g = shapely.transform(geom, project)
            if kind == "area" and c.polygons:
                out.append(g)
            elif kind == "line" and c.line_buffer_m > 0:
                out.append(g.buffer(c.line_buffer_m, quad_segs=64))
            elif kind == "point" and c.point_buffer_m > 0:
                out.append(g.buffer(c.point_buffer_m, quad_segs=64))
        shapes[c.id] = np.array(out, dtype=object)
    trees = {k: shapely.STRtree(v) for k, v in shapes.items() if len(v)}
    result = {}
    for qk in quadkeys:
        box = shapely.box(*grid.bounds(qk))
        got = set()
        for c in taxonomy.classes:
            if c.id not in trees:
                continue
            near = shapes[c.id][trees[c.id].query(box)]  # bounding-box candidates only, for speed
            pieces = shapely.intersection(near, box)
            pieces = pieces[shapely.area(pieces) > 1e-6]
            if len(pieces) and shapely.union_all(pieces).area >= c.min_share * box.area:
                got.add(c.id)
        result[qk] = got
    return result


def test_sample_labels_match_an_independent_oracle(labelled, small_sample):
    summary, chips, _ = labelled
    labels = read_labels(chips)
    table = labels.table
    assert summary.chips == table.height > 20 and not summary.failed
    assert set(table["nodata_class"].unique()) == {"all_data", "partial_data"}
    tax = load_taxonomy()
    want = oracle(small_sample.osm_pbf, tax, table["quadkey"].to_list(), 32610)
    got = {qk: set(ids) for qk, ids in zip(table["quadkey"].to_list(), table["label_ids"].to_list())}
    assert got == want
    # The scene is known: houses, roads, water, forest and fields are all there.
    present = {name for name, n in summary.class_counts.items() if n}
    assert {"building", "road", "water", "forest", "farmland", "residential"} <= present


def test_sample_outputs_agree_with_each_other(labelled):
    summary, chips, _ = labelled
    labels = read_labels(chips)
    table = labels.table
    assert table.columns == [
        *["chip", "path", "zone", "quadkey", "cell", "catalog_id", "nodata_class", "label_ids", "bitset", "split"],
        *["geometry", "bbox"],  # GeoParquet footprints
    ]
    assert table.schema["bitset"] == pl.Array(pl.UInt64, 1) and table.schema["label_ids"] == pl.List(pl.UInt16)
    assert all((chips / p).is_file() for p in table["path"])
    dense_csv = pl.read_csv(chips / "labels.csv")
    assert dense_csv.columns == ["Feature", *labels.classes]
    assert dense_csv["Feature"].to_list() == table["path"].to_list()
    assert np.array_equal(dense_csv.drop("Feature").to_numpy(), labels.dense())
    for ids, row in zip(table["label_ids"].to_list(), labels.dense()):
        assert ids == np.flatnonzero(row).tolist()
    meta = json.loads((chips / "labels.json").read_text())
    assert meta["classes"] == labels.classes and meta["chips"] == table.height
    assert meta["excluded"].get("no_data", 0) > 0 and "partial_data" not in meta["excluded"]
    assert meta["taxonomy"]["sha256"] == load_taxonomy().digest


def test_no_data_chips_excluded_partial_only_when_asked(labelled, tmp_path):
    _, chips, osm_root = labelled
    manifest = pl.read_parquet(chips / "chips.parquet")
    summary = build_labels(chips, osm_root, LabelSettings(out_dir=tmp_path, max_cloud=None))  # no-data classes only
    table = read_labels(tmp_path).table
    assert set(table["nodata_class"].unique()) == {"all_data"}
    assert table.height == (manifest["nodata_class"] == "all_data").sum()
    assert summary.excluded["no_data"] == (manifest["nodata_class"] == "no_data").sum()
    assert summary.excluded["partial_data"] == (manifest["nodata_class"] == "partial_data").sum()
    with pytest.raises(OutputExistsError, match="`overwrite`"):
        build_labels(chips, osm_root, LabelSettings(out_dir=tmp_path))


def test_missing_and_corrupt_cells_are_reported_and_left_out(labelled, tmp_path):
    _, chips, osm_root = labelled
    ard = tmp_path / "ard"
    shutil.copytree(osm_root, ard)
    cells = sorted(p for p in (ard / "10").iterdir())
    (cells[0] / "osm_data.json").write_text('{"quadkey": "12002022')  # cut off
    res = CliRunner().invoke(
        _labels_app(), ["build", "--ard-path", str(ard), "--chips", str(chips), "--out", str(tmp_path / "out"), "--include", "partial"]
    )
    assert res.exit_code == 1, res.output
    assert f"cell 10/{cells[0].name}" in res.output and "not readable JSON" in res.output
    table = read_labels(tmp_path / "out").table
    assert set(table["cell"].unique()) == {cells[1].name}
    (cells[0] / "osm_data.json").unlink()
    res = CliRunner().invoke(
        _labels_app(), ["build", "--ard-path", str(ard), "--chips", str(chips), "--out", str(tmp_path / "out"), "--overwrite"]
    )
    assert res.exit_code == 1 and "no osm_data.json" in res.output


def _labels_app():
    from imagesim.cli.labels import labels_app

    return labels_app


def test_build_input_errors_are_clear(tmp_path, labelled):
    _, chips, osm_root = labelled
    with pytest.raises(ImagesimFileNotFoundError, match="chips.parquet"):
        build_labels(tmp_path, osm_root)
    bad = tmp_path / "chips"
    bad.mkdir()
    pl.DataFrame({"chip": ["x"]}).write_parquet(bad / "chips.parquet")
    with pytest.raises(LabelInputError, match="missing column"):
        build_labels(bad, osm_root)
    with pytest.raises(InvalidArgumentError, match="`include` 'everything'") as bad:
        LabelSettings(include=("everything",))
    assert bad.value.param == "include"
    (tmp_path / "nd.json").write_text("[1, 2]")
    with pytest.raises(LabelInputError, match="nd.json"):
        build_labels(chips, osm_root, LabelSettings(out_dir=tmp_path / "o", nodata_index=tmp_path / "nd.json"))


# --------------------------------------------------------------------------------------------
# A real extract
# --------------------------------------------------------------------------------------------


def test_liechtenstein_labels_match_the_oracle(tmp_path, realdata):
    """Vaduz: real OSM (imported) against a manifest of every z17 chip of two cells, checked chip by chip."""
    from imagesim.labels.cells import BBox, cells_covering
    from imagesim.labels.osm_import import import_osm

    pbf = realdata / "osm" / "pyosmium__liechtenstein.osm.pbf"
    cells = cells_covering(BBox(9.515, 47.135, 9.53, 47.145), 32)[:2]
    for c in cells:
        c.folder(tmp_path / "ard").mkdir(parents=True)
    import_osm(pbf, tmp_path / "ard", cells)
    quadkeys = [q for c in cells for q in grid.children(c.quadkey, 17)]
    chips = tmp_path / "chips"
    chips.mkdir()
    pl.DataFrame(
        {
            "chip": [grid.chip_name(32, q, "1030010000000000") for q in quadkeys],
            "zone": pl.Series([32] * len(quadkeys), dtype=pl.UInt8),
            "quadkey": quadkeys,
            "zoom": pl.Series([17] * len(quadkeys), dtype=pl.UInt8),
            "cell": [q[:12] for q in quadkeys],
            "catalog_id": ["1030010000000000"] * len(quadkeys),
            "nodata_class": ["all_data"] * len(quadkeys),
        }
    ).write_parquet(chips / "chips.parquet")
    summary = build_labels(chips, tmp_path / "ard")
    assert summary.chips == 2048 and not summary.failed
    counts = summary.class_counts
    assert counts["building"] > 300 and counts["road"] > 300 and counts["forest"] > 50
    table = read_labels(chips).table
    tax = load_taxonomy()
    epsg = grid.epsg(cells[0].quadkey, 32)
    from imagesim.labels.cells import cell_bbox

    boxes = [cell_bbox(c) for c in cells]
    around = (
        min(b.west for b in boxes) - 0.01,
        min(b.south for b in boxes) - 0.01,
        max(b.east for b in boxes) + 0.01,
        max(b.north for b in boxes) + 0.01,
    )
    want = oracle(pbf, tax, quadkeys, epsg, around)
    got = {qk: set(ids) for qk, ids in zip(table["quadkey"].to_list(), table["label_ids"].to_list())}
    diff = {qk: (got[qk], want[qk]) for qk in quadkeys if got[qk] != want[qk]}
    assert not diff, f"{len(diff)} of {len(quadkeys)} chips differ from the oracle, e.g. {list(diff.items())[:5]}"


# --------------------------------------------------------------------------------------------
# Split and report
# --------------------------------------------------------------------------------------------


def test_split_keeps_groups_together_and_is_deterministic(labelled, tmp_path):
    from imagesim.labels.split import split_labels

    _, chips, _ = labelled
    for name in ("labels.parquet", "labels.json"):
        shutil.copy(chips / name, tmp_path / name)
    a = split_labels(tmp_path, val=0.25, seed=3, group_level=15)
    first = read_labels(tmp_path).table
    b = split_labels(tmp_path, val=0.25, seed=3, group_level=15)
    assert first["split"].to_list() == read_labels(tmp_path).table["split"].to_list()
    assert (a.train, a.val) == (b.train, b.val) and a.val > 0 and a.train > 0
    groups = first.group_by(pl.col("quadkey").str.slice(0, 15)).agg(pl.col("split").n_unique())
    assert groups["split"].max() == 1  # no group on both sides
    assert a.train + a.val == first.height
    val_csv = pl.read_csv(tmp_path / "labels-val.csv")
    assert val_csv["Feature"].to_list() == first.filter(pl.col("split") == "val")["path"].to_list()
    meta = json.loads((tmp_path / "labels.json").read_text())
    assert meta["split"]["val_chips"] == a.val and meta["split"]["group_level"] == 15
    other = split_labels(tmp_path, val=0.25, seed=4, group_level=15)
    assert other.val > 0
    with pytest.raises(LabelInputError, match="finer `group_level`"):
        split_labels(tmp_path, val=0.2, group_level=10)
    with pytest.raises(InvalidArgumentError, match="`val` 1.5") as bad:
        split_labels(tmp_path, val=1.5)
    assert bad.value.param == "val"


def test_report_writes_figures_and_summary(labelled, tmp_path):
    from PIL import Image

    _, chips, _ = labelled
    res = CliRunner().invoke(_labels_app(), ["report", "--chips", str(chips), "--out", str(tmp_path), "--samples", "6"])
    assert res.exit_code == 0, res.output
    for name in ("class_counts.png", "cardinality.png", "cooccurrence.png", "samples.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and im.size[1] > 150
    md = (tmp_path / "report.md").read_text()
    labels = read_labels(chips)
    for name, n in zip(labels.classes, labels.dense().sum(axis=0)):
        assert f"| {name} | {n:,} |" in md
    assert "samples.png" in md


def test_streamed_outputs_do_not_depend_on_the_row_group(labelled, tmp_path, monkeypatch):
    """labels.parquet and labels.csv are written a slice of a cell's chips at a time: tiny slices and row groups give the
    same files (and sidecar) as the default, one file each and no temporary file left behind."""
    import pyarrow.parquet as pq

    from imagesim.labels import build

    _, chips, osm_root = labelled
    monkeypatch.setattr(geoparquet, "STREAM_ROW_GROUP", 7)
    monkeypatch.setattr(build, "LABEL_SLICE", 5)  # a cell's chips in many slices
    out = tmp_path / "small-groups"
    build_labels(chips, osm_root, LabelSettings(include=("partial",), out_dir=out))
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "labels.json", "labels.parquet"]
    assert pq.ParquetFile(out / "labels.parquet").num_row_groups > 1
    assert pl.read_parquet(out / "labels.parquet").equals(pl.read_parquet(chips / "labels.parquet"))
    assert pq.read_metadata(out / "labels.parquet").metadata[b"geo"] == pq.read_metadata(chips / "labels.parquet").metadata[b"geo"]
    assert (out / "labels.csv").read_bytes() == (chips / "labels.csv").read_bytes()
    got, want = (json.loads((d / "labels.json").read_text()) for d in (out, chips))
    assert {k: v for k, v in got.items() if k != "created"} == {k: v for k, v in want.items() if k != "created"}
    table = read_labels(out).table
    assert table["cell"].n_unique() == 2  # both cells
    # in manifest order: an acquisition of a cell at a time (its rows together), its chips in chip order
    runs = table.select(pl.concat_str("cell", "catalog_id").alias("k"))["k"].rle()
    assert runs.struct.field("value").n_unique() == runs.len()
    assert all(g["chip"].is_sorted() for g in table.partition_by("cell", "catalog_id", maintain_order=True))


def test_nothing_labelled_leaves_no_file_and_no_folder(labelled, tmp_path):
    _, chips, osm_root = labelled
    out = tmp_path / "none"
    empty = tmp_path / "empty-ard"
    shutil.copytree(osm_root, empty)
    for f in empty.rglob("osm_data.json"):
        f.unlink()
    summary = build_labels(chips, empty, LabelSettings(out_dir=out))
    assert summary.nothing_labelled and summary.missing_cells and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
