"""`imagesim stac`: a self-contained STAC catalog of a chips folder, valid against the vendored STAC
schemas (tests/data/stac-schemas, no network), every chip exactly once, hrefs to the real files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("pystac")
jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

from imagesim import artefacts  # noqa: E402
from imagesim.errors import ImagesimError, OutputExistsError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.search.stac import write_stac  # noqa: E402

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "stac-schemas"
VENDORED = "v1.1.0-beta.1"
STAC_VERSION = "1.1.0"


def _registry():
    """The vendored schemas under the `$id` URLs the documents name. The only version in the stored
    stac-spec mirror is v1.1.0-beta.1 (see the README there); it is served for v1.1.0 too, with its
    `stac_version` constant read as the version pystac writes."""
    import jsonschema_specifications
    from referencing import Registry, Resource

    resources = []
    for path in sorted((SCHEMAS / VENDORED).rglob("*.json")):
        text = path.read_text().replace(f'"const": "{VENDORED.removeprefix("v")}"', f'"const": "{STAC_VERSION}"')
        rel = path.relative_to(SCHEMAS / VENDORED).as_posix()
        for version in (VENDORED, f"v{STAC_VERSION}"):
            contents = json.loads(text.replace(f"/{VENDORED}/", f"/{version}/"))
            resources.append((f"https://schemas.stacspec.org/{version}/{rel}", Resource.from_contents(contents)))
    for path in sorted((SCHEMAS / "geojson").glob("*.json")):
        resources.append((f"https://geojson.org/schema/{path.name}", Resource.from_contents(json.loads(path.read_text()))))
    return Registry().with_resources(resources).combine(jsonschema_specifications.REGISTRY)


REGISTRY = None


def validate(doc: dict, path: Path) -> None:
    global REGISTRY
    if REGISTRY is None:
        REGISTRY = _registry()
    kind = {"Catalog": "catalog-spec/json-schema/catalog.json", "Collection": "collection-spec/json-schema/collection.json"}.get(
        doc["type"], "item-spec/json-schema/item.json"
    )
    assert doc["stac_version"] == STAC_VERSION
    schema = REGISTRY.contents(f"https://schemas.stacspec.org/v{STAC_VERSION}/{kind}")
    errors = list(jsonschema.Draft7Validator(schema, registry=REGISTRY).iter_errors(doc))
    assert not errors, f"{path}: {[e.message for e in errors[:3]]}"


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("stac-chips") / "chips"
    run_chip(small_sample.root, dest, ChipSettings(zoom=17))
    return dest


@pytest.fixture(scope="module")
def few(chips, tmp_path_factory) -> Path:
    """The chips folder cut to 20 chips per acquisition (per-chip Items stay quick to write and validate)."""
    folder = tmp_path_factory.mktemp("stac-few") / "chips"
    folder.mkdir()
    manifest = artefacts.read_manifest(chips)
    manifest.filter(pl.int_range(pl.len()).over("catalog_id") < 20).write_parquet(folder / artefacts.CHIPS_MANIFEST)
    for zone in manifest["zone"].unique().to_list():
        (folder / str(zone)).symlink_to(chips / str(zone))
    return folder


def _docs(out: Path) -> dict[str, list[tuple[Path, dict]]]:
    found: dict[str, list[tuple[Path, dict]]] = {"Catalog": [], "Collection": [], "Feature": []}
    for path in sorted(out.rglob("*.json")):
        doc = json.loads(path.read_text())
        found[doc["type"]].append((path, doc))
    return found


def _href(doc_path: Path, href: str) -> Path:
    return Path(href) if Path(href).is_absolute() else (doc_path.parent / href).resolve()


@pytest.mark.parametrize("granularity", ["acquisition", "chip"])
def test_catalog_is_valid_and_holds_every_chip_once(chips, few, tmp_path, granularity) -> None:
    chips = chips if granularity == "acquisition" else few
    out = tmp_path / "catalog"
    summary = write_stac(chips, out, granularity=granularity)
    manifest = artefacts.read_chip_table(chips)
    docs = _docs(out)
    assert len(docs["Catalog"]) == 1 and docs["Collection"] and docs["Feature"]
    for kind in docs.values():
        for path, doc in kind:
            validate(doc, path)
            for link in doc["links"]:  # self-contained: links inside the catalog are relative
                if link["rel"] in ("root", "parent", "child", "item", "collection"):
                    assert not Path(link["href"]).is_absolute() and _href(path, link["href"]).is_file(), link
    seen: list[str] = []
    for path, item in docs["Feature"]:
        chip_assets = [a for a in item["assets"].values() if "data" in a["roles"]]
        if granularity == "chip":
            seen.append(item["properties"]["imagesim:chip"])
            assert item["properties"]["nodata_class"] in artefacts.NODATA_CLASSES
            assert 0.0 <= item["properties"]["valid_fraction"] <= 1.0
        else:
            seen += [a["imagesim:chip"] for a in chip_assets]
            assert all(a["nodata_class"] in artefacts.NODATA_CLASSES for a in chip_assets)
        for a in chip_assets:
            if "not-written" not in a["roles"]:
                assert _href(path, a["href"]).is_file()
        source = _href(path, item["assets"]["source"]["href"])
        assert source.is_file() and source.name.endswith("-visual.tif")
        meta = _href(path, item["assets"]["metadata"]["href"])
        assert meta.is_file() and meta.name == f"{item['properties']['imagesim:catalog_id']}.json"
        assert "source" in item["assets"]["source"]["roles"]
        assert "labels" not in json.dumps(item["properties"]) or granularity == "acquisition"
    assert sorted(seen) == sorted(manifest["chip"].to_list())  # every chip exactly once
    assert summary.chips == manifest.height
    # collection extents cover their items' boxes and dates
    for _cpath, col in docs["Collection"]:
        (w, s, e, n) = col["extent"]["spatial"]["bbox"][0]
        start, end = col["extent"]["temporal"]["interval"][0]
        for _ipath, item in docs["Feature"]:
            if item["collection"] == col["id"]:
                iw, is_, ie, in_ = item["bbox"]
                assert w <= iw and s <= is_ and e >= ie and n >= in_
                assert start[:10] <= item["properties"]["datetime"][:10] <= end[:10]


def test_labels_and_embeddings_when_present(few, tmp_path) -> None:
    chips = few
    folder = tmp_path / "chips"
    folder.mkdir()
    (folder / artefacts.CHIPS_MANIFEST).write_bytes((chips / artefacts.CHIPS_MANIFEST).read_bytes())
    table = artefacts.read_chip_table(chips)
    names = table["chip"].to_list()
    pl.DataFrame(
        {
            "chip": names,
            "cell": table["cell"],
            "label_ids": [[0, 2] if i % 2 else [] for i in range(len(names))],
            "bitset": [[5 if i % 2 else 0] for i in range(len(names))],
        },
        schema_overrides={"label_ids": pl.List(pl.UInt16), "bitset": pl.List(pl.UInt64)},
    ).write_parquet(folder / artefacts.LABELS_PARQUET)
    (folder / artefacts.LABELS_JSON).write_text(json.dumps({"classes": ["building", "road", "water"]}))
    pl.DataFrame({"chip": names[::-1], "model_id": "m1", "embedding": [[1.0, 0.0]] * len(names)}).write_parquet(
        folder / artefacts.EMBEDDINGS
    )
    out = tmp_path / "catalog"
    write_stac(folder, out, granularity="chip")
    items = {doc["properties"]["imagesim:chip"]: (p, doc) for p, doc in _docs(out)["Feature"]}
    assert len(items) == len(names)
    for i, chip in enumerate(names):
        path, doc = items[chip]
        validate(doc, path)
        assert doc["properties"]["labels"] == (["building", "water"] if i % 2 else [])
        assert doc["properties"]["imagesim:model_id"] == "m1"
        assert doc["properties"]["imagesim:embedding_row"] == len(names) - 1 - i
        assert _href(path, doc["assets"]["embeddings"]["href"]) == (folder / artefacts.EMBEDDINGS).resolve()


def test_existing_output_is_kept_unless_overwrite(chips, tmp_path) -> None:
    out = tmp_path / "catalog"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        write_stac(chips, out)
    assert (out / "mine.txt").read_text() == "keep" and len(list(out.iterdir())) == 1
    write_stac(chips, out, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "catalog.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["catalog"]  # no temporary folder left beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    write_stac(chips, empty)  # an empty folder is no output to keep
    assert (empty / "catalog.json").is_file()


def test_nothing_to_catalog_is_an_error(tmp_path) -> None:
    (tmp_path / "chips").mkdir()
    artefacts.read_manifest(tmp_path / "chips").write_parquet(tmp_path / "chips" / artefacts.CHIPS_MANIFEST)
    with pytest.raises(ImagesimError, match="nothing to catalog"):
        write_stac(tmp_path / "chips", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_stac(cli, few, tmp_path) -> None:
    chips = few
    out = tmp_path / "catalog"
    res = cli("stac", "--chips", chips, "--out", out, "--granularity", "chip")
    assert res.returncode == 0, res.stderr
    assert "items" in res.stdout and (out / "catalog.json").is_file()
    again = cli("stac", "--chips", chips, "--out", out)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    res = cli("stac", "--chips", chips, "--out", out, "--overwrite", "--granularity", "cell")
    assert res.returncode != 0 and "--granularity" in res.stderr
    res = cli("stac", "--chips", chips, "--out", out, "--overwrite")
    assert res.returncode == 0, res.stderr


def test_original_chips_folder_needs_ard_path(chips, small_sample, tmp_path) -> None:
    """A folder of the original tool (JPEGs, no chips.parquet): the manifest derived from the names has
    no COG or date; --ard-path finds them."""
    folder = tmp_path / "chips"
    table = artefacts.read_chip_table(chips).head(5)
    for rel in table["path"].to_list():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((chips / rel).read_bytes())
    with pytest.warns(artefacts.DerivedManifestWarning), pytest.raises(ImagesimError, match="nothing to catalog.*ard_path"):
        write_stac(folder, tmp_path / "none")
    summary = write_stac(folder, tmp_path / "catalog", ard_path=small_sample.root, granularity="chip")
    assert summary.chips == 5 and summary.skipped == 0
    for path, item in _docs(tmp_path / "catalog")["Feature"]:
        validate(item, path)
        assert _href(path, item["assets"]["source"]["href"]).is_file()


@pytest.mark.parametrize("granularity", ["acquisition", "chip"])
def test_items_written_one_by_one_are_what_pystac_saves(few, tmp_path, granularity) -> None:
    """Items are saved as they are made and dropped: the folder equals the one pystac writes when it saves the
    same catalog whole (links, relative hrefs, collections), and the summary counts what was written."""
    import pystac

    out = tmp_path / "streamed"
    summary = write_stac(few, out, granularity=granularity)
    docs = _docs(out)
    assert summary.items == len(docs["Feature"]) and summary.collections == len(docs["Collection"]) == 1
    whole = pystac.Catalog.from_file(str(out / "catalog.json")).full_copy()
    again = tmp_path / "whole"
    whole.normalize_hrefs(str(again))
    whole.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    def unordered_links(doc: dict) -> dict:  # pystac orders the links of a catalog it read differently
        return {**doc, "links": sorted(doc["links"], key=lambda link: (link["rel"], link["href"]))}

    got = {p.relative_to(out): unordered_links(d) for kind in docs.values() for p, d in kind}
    want = {p.relative_to(again): unordered_links(d) for kind in _docs(again).values() for p, d in kind}
    assert got == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed", "whole"]  # no temporary folder left
