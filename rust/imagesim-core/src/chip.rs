//! Cutting one ARD cell COG into chips: JPEG files on the quadkey grid plus, for every chip,
//! the count of no-data pixels measured on the source pixels in the same pass.
//!
//! Fast paths, in order of preference:
//! - the chip is exactly one JPEG tile of the COG (z17 with 512 px blocks): the tile's bytes are
//!   decoded straight to YUV planes, measured, and re-encoded from YUV — or, with
//!   `passthrough`, copied out as a standalone JPEG without re-encoding;
//! - chips smaller than a tile and aligned to it (z18+): each tile is decoded once and cut;
//! - anything else: a windowed read of the chunks the chip touches.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::cog::{compression, photometric, Cog, Level, SampleFormat};
use crate::error::{Error, Result};
use crate::grid::{self, chip_window, ChipName, Tile, Window};
use crate::jpeg;
use crate::nodata::{count_decoded, count_nodata, Scratch};
use crate::store;

/// How a chip run behaves; one value for the whole run.
#[derive(Debug, Clone)]
pub struct ChipOptions {
    pub zoom: u8,
    pub quality: u8,
    /// Copy JPEG tiles out unchanged when a chip is exactly one tile.
    pub passthrough: bool,
    /// A pixel is no-data when every band is <= this value.
    pub nodata_threshold: u8,
    /// Rewrite chips that already exist.
    pub overwrite: bool,
    /// Do not write chips whose every pixel is no-data (they are still measured and recorded).
    pub skip_empty: bool,
    /// Measure no-data even where that is the only reason to decode (passthrough chips).
    pub measure: bool,
}

impl Default for ChipOptions {
    fn default() -> Self {
        ChipOptions {
            zoom: 17,
            quality: 90,
            passthrough: false,
            nodata_threshold: 0,
            overwrite: false,
            skip_empty: false,
            measure: true,
        }
    }
}

/// One COG to chip and where its chips go.
#[derive(Debug, Clone)]
pub struct CogJob {
    pub cog_path: PathBuf,
    pub zone: u8,
    pub cell_quadkey: String,
    pub catalog_id: String,
    /// Folder the chips are written into (`DEST/<zone>`): a local folder or an object-store
    /// prefix (`s3://bucket/chips/10`), where chips are uploaded in the background.
    pub out_dir: PathBuf,
    /// Chip names already in `out_dir`, when the caller listed it (a store is listed once per run,
    /// not once per COG); `None`: look each chip up (local) or list `out_dir` (store).
    pub existing: Option<HashSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChipStatus {
    /// Written by this run.
    Written,
    /// Already on disk and known to the caller: not read, not written.
    Skipped,
    /// Already on disk but unknown to the caller: measured, file left as it was.
    Measured,
    /// Entirely no-data and `skip_empty` asked not to write it.
    Empty,
    Failed,
}

impl ChipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChipStatus::Written => "written",
            ChipStatus::Skipped => "skipped",
            ChipStatus::Measured => "measured",
            ChipStatus::Empty => "empty",
            ChipStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Reencoded,
    Passthrough,
    None,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Reencoded => "reencode",
            Encoding::Passthrough => "passthrough",
            Encoding::None => "",
        }
    }
}

/// What happened to one chip.
#[derive(Debug, Clone)]
pub struct ChipRecord {
    pub name: String,
    pub quadkey: String,
    pub window: Window,
    pub status: ChipStatus,
    pub encoding: Encoding,
    /// Pixels whose bands are all <= the threshold (None when the chip was not read).
    pub nodata_pixels: Option<u64>,
    pub total_pixels: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

/// Check that a COG is an ARD visual image of `cell` in `zone`: size, georeferencing, bands.
pub fn validate_ard_cog(cog: &Cog, zone: u8, cell: &Tile) -> Result<()> {
    let path = cog.path();
    let mismatch = |msg: String| Error::Georeference {
        path: path.to_path_buf(),
        msg,
    };
    let level = cog
        .levels()
        .first()
        .ok_or_else(|| Error::corrupt(path, "no image in file"))?;
    if level.width != grid::COG_PIXELS || level.height != grid::COG_PIXELS {
        return Err(mismatch(format!(
            "image is {}x{} px; an ARD level-12 COG is {n}x{n}",
            level.width,
            level.height,
            n = grid::COG_PIXELS
        )));
    }
    if level.bands < 3 || level.bits_per_sample != 8 || level.sample_format != SampleFormat::Uint {
        return Err(Error::unsupported(
            path,
            format!(
                "expected a 3-band uint8 visual image, found {} band(s) of {}-bit samples",
                level.bands, level.bits_per_sample
            ),
        ));
    }
    let expected = grid::cell_geotransform(cell)?;
    let actual = cog
        .geo()
        .geotransform
        .ok_or_else(|| mismatch("file has no geotransform".into()))?;
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
    let ok = close(actual[0], expected[0], 1e-3)
        && close(actual[3], expected[3], 1e-3)
        && close(actual[1], expected[1], 1e-9)
        && close(actual[5], expected[5], 1e-9)
        && actual[2].abs() < 1e-12
        && actual[4].abs() < 1e-12;
    if !ok {
        return Err(mismatch(format!(
            "geotransform {actual:?} does not match cell {} (expected {expected:?})",
            cell.quadkey()
        )));
    }
    if let Some(epsg) = cog.geo().epsg {
        let want = cell.epsg(zone)?;
        if epsg != want {
            return Err(mismatch(format!(
                "CRS is EPSG:{epsg}, cell {} in zone {zone} is EPSG:{want}",
                cell.quadkey()
            )));
        }
    }
    Ok(())
}

/// A measured chip ready to be written: its JPEG bytes (None when nothing is to be written).
struct Cut {
    /// None when not measured (passthrough without measuring).
    nodata_pixels: Option<u64>,
    jpeg: Option<Vec<u8>>,
    encoding: Encoding,
}

/// The run over one COG.
struct CogChipper<'a> {
    cog: Cog,
    job: &'a CogJob,
    opts: &'a ChipOptions,
    /// JPEG of an all-no-data chip, encoded once (sparse tiles).
    empty_chip: std::sync::OnceLock<std::result::Result<Vec<u8>, String>>,
    /// Chips on their way to an object store (`None`: written to a local folder).
    uploads: Option<store::Uploads>,
    /// The first problem of the whole COG a chip ran into (see [`Error::is_whole_image`]): the
    /// remaining chips are not tried and the COG fails with this one error.
    whole_cog: std::sync::OnceLock<Error>,
}

impl CogChipper<'_> {
    fn level(&self) -> &Level {
        &self.cog.levels()[0]
    }

    /// JPEG tiles of a YCbCr or RGB 3-band image can be decoded/copied tile by tile.
    fn jpeg_tiles(&self) -> bool {
        let l = self.level();
        l.compression == compression::JPEG
            && l.tiled
            && !l.planar
            && l.bands == 3
            && (l.photometric == photometric::YCBCR || l.photometric == photometric::RGB)
    }

    /// Chips that are whole chunks, or sub-squares of one chunk, can be cut chunk by chunk.
    fn aligned_to_chunks(&self, size: u32) -> bool {
        let l = self.level();
        l.tiled
            && l.chunk_width == l.chunk_height
            && l.chunk_width.is_multiple_of(size)
            && grid::APRON.is_multiple_of(l.chunk_width)
            && grid::COG_PIXELS.is_multiple_of(l.chunk_width)
    }

    fn fill_value(&self) -> u8 {
        // GDAL fills sparse chunks with the nodata value (0 when there is none).
        self.cog
            .geo()
            .nodata
            .filter(|v| (0.0..=255.0).contains(v))
            .map_or(0, |v| v as u8)
    }

    fn empty_jpeg(&self, size: u32) -> Result<Vec<u8>> {
        let fill = self.fill_value();
        self.empty_chip
            .get_or_init(|| {
                let n = size as usize;
                jpeg::encode_rgb(&vec![fill; n * n * 3], n, n, n * 3, self.opts.quality)
            })
            .clone()
            .map_err(|e| Error::jpeg(self.cog.path(), format!("JPEG encoding failed: {e}")))
    }

    /// The chip is exactly one JPEG tile: decode (and maybe copy) that tile alone.
    fn cut_whole_jpeg_tile(
        &self,
        window: Window,
        write: bool,
        scratch: &mut Scratch,
    ) -> Result<Cut> {
        let l = self.level();
        let (cx, cy) = (
            window.col_off / l.chunk_width,
            window.row_off / l.chunk_height,
        );
        let total = u64::from(window.width) * u64::from(window.height);
        let path = self.cog.path();
        let Some(raw) = self.cog.read_raw_chunk(0, l.chunk_index(cx, cy))? else {
            // Sparse tile: every pixel is the fill value.
            let nodata = if self.fill_value() <= self.opts.nodata_threshold {
                total
            } else {
                0
            };
            let jpeg = if write {
                Some(self.empty_jpeg(window.width)?)
            } else {
                None
            };
            return Ok(Cut {
                nodata_pixels: Some(nodata),
                jpeg,
                encoding: Encoding::Reencoded,
            });
        };
        // Where the tile is, in the words of `Cog` reads (built only when a tile fails).
        let at = |e: Error| match e {
            Error::CorruptTiff { path, msg } => Error::CorruptTiff {
                path,
                msg: format!("{}: {msg}", l.chunk_label(0, l.chunk_index(cx, cy))),
            },
            e => e,
        };
        let passthrough = self.opts.passthrough && l.photometric == photometric::YCBCR;
        let stream = jpeg::tiff_tile_to_jpeg(l.jpeg_tables.as_deref(), &raw, passthrough)
            .map_err(|p| at(Error::corrupt(path, p.to_string())))?;
        if passthrough && write && !self.opts.measure {
            return Ok(Cut {
                nodata_pixels: None,
                jpeg: Some(stream),
                encoding: Encoding::Passthrough,
            });
        }
        let corrupt = |p: jpeg::Problem| at(l.jpeg_tile_error(path, p));
        let (tw, th) = (l.chunk_width as usize, l.chunk_height as usize);
        // One YUV decode serves both the measurement and (when re-encoding) the encoder.
        jpeg::decode_yuv_into(&stream, &mut scratch.yuv).map_err(corrupt)?;
        if scratch.yuv.width != tw || scratch.yuv.height != th {
            return Err(corrupt(jpeg::Problem::Corrupt(format!(
                "the tile decodes to {}×{} px, expected {tw}×{th}",
                scratch.yuv.width, scratch.yuv.height
            ))));
        }
        let nodata = count_decoded(
            &stream,
            &scratch.yuv,
            self.opts.nodata_threshold,
            &mut scratch.rgb,
        )
        .map_err(corrupt)?;
        if !write {
            return Ok(Cut {
                nodata_pixels: Some(nodata),
                jpeg: None,
                encoding: Encoding::None,
            });
        }
        if passthrough {
            return Ok(Cut {
                nodata_pixels: Some(nodata),
                jpeg: Some(stream),
                encoding: Encoding::Passthrough,
            });
        }
        let jpeg = jpeg::encode_yuv(&scratch.yuv, self.opts.quality)
            .map_err(|e| Error::jpeg(path, format!("JPEG encoding failed: {e}")))?;
        Ok(Cut {
            nodata_pixels: Some(nodata),
            jpeg: Some(jpeg),
            encoding: Encoding::Reencoded,
        })
    }

    /// Measure and encode interleaved pixels (`bands` per pixel, first 3 used) of a chip.
    fn cut_pixels(
        &self,
        pixels: &[u8],
        width: u32,
        height: u32,
        pitch: usize,
        bands: usize,
        write: bool,
    ) -> Result<Cut> {
        let threshold = self.opts.nodata_threshold;
        let (w, h) = (width as usize, height as usize);
        let mut rgb: Vec<u8>;
        let (data, data_pitch) = if bands == 3 {
            (pixels, pitch)
        } else {
            // Drop extra bands (alpha) for JPEG.
            rgb = Vec::with_capacity(w * h * 3);
            for row in 0..h {
                let line = &pixels[row * pitch..row * pitch + w * bands];
                line.chunks_exact(bands)
                    .for_each(|p| rgb.extend_from_slice(&p[..3]));
            }
            (rgb.as_slice(), w * 3)
        };
        let nodata: u64 = (0..h)
            .map(|row| {
                count_nodata(
                    &data[row * data_pitch..row * data_pitch + w * 3],
                    3,
                    threshold,
                )
            })
            .sum();
        let jpeg = if write {
            Some(
                jpeg::encode_rgb(data, w, h, data_pitch, self.opts.quality).map_err(|e| {
                    Error::jpeg(self.cog.path(), format!("JPEG encoding failed: {e}"))
                })?,
            )
        } else {
            None
        };
        Ok(Cut {
            nodata_pixels: Some(nodata),
            jpeg,
            encoding: if write {
                Encoding::Reencoded
            } else {
                Encoding::None
            },
        })
    }
}

/// Writes `bytes` to `path` atomically: a hidden temporary file in the same folder, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("chip");
    let tmp = dir.join(
        format!(
            ".{name}.{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], ""),
    );
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A chip of the run: its name, tile and window, and what the caller already knows of it.
struct ChipTask {
    name: String,
    tile: Tile,
    window: Window,
    /// On disk already and not to be overwritten.
    exists: bool,
}

/// Chip one cell COG. COG-level problems (unreadable file, wrong georeferencing, a codec, tile
/// size or JPEG tables we cannot decode — found up front or at the first tile that shows them)
/// are one `Err`; chip-level problems (a corrupt tile) become `Failed` records and the rest goes on.
/// `known` holds chip names the caller has records for: existing files among them are skipped
/// without reading. `progress` is incremented once per chip finished.
pub fn chip_cog(
    job: &CogJob,
    opts: &ChipOptions,
    known: &HashSet<String>,
    progress: &AtomicU64,
) -> Result<Vec<ChipRecord>> {
    if !(grid::CELL_ZOOM..=20).contains(&opts.zoom) {
        return Err(Error::InvalidArgument(format!(
            "chip zoom must be 12..20, got {}",
            opts.zoom
        )));
    }
    if !(1..=100).contains(&opts.quality) {
        return Err(Error::InvalidArgument(format!(
            "JPEG quality must be 1..100, got {}",
            opts.quality
        )));
    }
    let cell = Tile::from_quadkey(&job.cell_quadkey)?;
    if cell.z != grid::CELL_ZOOM {
        return Err(Error::Grid(format!(
            "cell quadkey {:?} must have 12 digits",
            job.cell_quadkey
        )));
    }
    let cog = Cog::open(&job.cog_path)?;
    validate_ard_cog(&cog, job.zone, &cell)?;
    // Codec, tile size and JPEG tables: a problem there is the COG's, reported once.
    cog.check_level(0)?;
    let remote = store::is_url(&job.out_dir);
    let listed;
    let existing = match (&job.existing, remote) {
        (Some(names), _) => Some(names),
        (None, true) if !opts.overwrite => {
            listed = list_names(&job.out_dir)?;
            Some(&listed)
        }
        (None, true) => None,
        (None, false) => {
            std::fs::create_dir_all(&job.out_dir).map_err(|e| Error::io(&job.out_dir, e))?;
            None
        }
    };

    let mut tasks = Vec::new();
    for tile in cell.children_at(opts.zoom)? {
        let name = ChipName::new(job.zone, &tile.quadkey(), &job.catalog_id)?.file_name();
        let exists = !opts.overwrite
            && match existing {
                Some(names) => names.contains(&name),
                None => !remote && job.out_dir.join(&name).exists(),
            };
        tasks.push(ChipTask {
            name,
            tile,
            window: chip_window(&tile)?,
            exists,
        });
    }
    // Row-major, the order a COG stores its tiles in: reads then move forward through the file,
    // which is what read-ahead (object stores) and the page cache (local disks) reward.
    tasks.sort_by_key(|t| (t.window.row_off, t.window.col_off));
    let chipper = CogChipper {
        cog,
        job,
        opts,
        empty_chip: std::sync::OnceLock::new(),
        uploads: remote.then(store::Uploads::default),
        whole_cog: std::sync::OnceLock::new(),
    };
    let size = tasks[0].window.width;
    let level = chipper.level().clone();

    let mut records: Vec<ChipRecord> = if chipper.aligned_to_chunks(size)
        && size < level.chunk_width
    {
        // Several chips per chunk: group chips by chunk, decode each chunk once.
        let per_side = (level.chunk_width / size) as usize;
        // Keyed (row, column): chunks in file order.
        let mut groups: std::collections::BTreeMap<(u32, u32), Vec<&ChipTask>> = Default::default();
        for t in &tasks {
            groups
                .entry((
                    t.window.row_off / level.chunk_height,
                    t.window.col_off / level.chunk_width,
                ))
                .or_default()
                .push(t);
        }
        debug_assert!(groups.values().all(|g| g.len() == per_side * per_side));
        groups
            .into_par_iter()
            .flat_map_iter(|((cy, cx), group)| chipper.chip_group(cx, cy, &group, known, progress))
            .collect()
    } else {
        tasks
            .par_iter()
            .map_init(Scratch::default, |scratch, task| {
                let rec = chipper.chip_one(task, known, scratch);
                progress.fetch_add(1, Ordering::Relaxed);
                rec
            })
            .collect()
    };
    if let Some(uploads) = chipper.uploads {
        // Chips were recorded as written when queued; the ones whose upload failed are not.
        let failed: std::collections::HashMap<String, std::io::Error> =
            uploads.finish().into_iter().collect();
        for rec in records.iter_mut().filter(|r| failed.contains_key(&r.name)) {
            let url = job.out_dir.join(&rec.name);
            rec.status = ChipStatus::Failed;
            rec.bytes = 0;
            rec.error = Some(format!(
                "{}: upload failed: {}",
                url.display(),
                failed[&rec.name]
            ));
        }
    }
    if let Some(e) = chipper.whole_cog.into_inner() {
        return Err(e);
    }
    Ok(records)
}

/// Names of the objects directly under a store prefix.
fn list_names(prefix: &Path) -> Result<HashSet<String>> {
    let text = format!("{}/", prefix.display().to_string().trim_end_matches('/'));
    let objects = store::list(&text, None).map_err(|e| Error::io(prefix, e))?;
    Ok(objects
        .into_iter()
        .filter_map(|(url, _, _)| {
            url.strip_prefix(&text)
                .filter(|n| !n.contains('/'))
                .map(str::to_owned)
        })
        .collect())
}

impl CogChipper<'_> {
    fn record(&self, task: &ChipTask, status: ChipStatus) -> ChipRecord {
        ChipRecord {
            name: task.name.clone(),
            quadkey: task.tile.quadkey(),
            window: task.window,
            status,
            encoding: Encoding::None,
            nodata_pixels: None,
            total_pixels: u64::from(task.window.width) * u64::from(task.window.height),
            bytes: 0,
            error: None,
        }
    }

    /// Turn a cut (or its error) into a record, writing the file when there is one.
    fn finish(&self, task: &ChipTask, cut: Result<Cut>) -> ChipRecord {
        let mut rec = self.record(task, ChipStatus::Failed);
        let cut = match cut {
            Ok(cut) => cut,
            Err(e) if e.is_whole_image() => {
                let _ = self.whole_cog.set(e);
                return rec; // dropped: the COG fails as a whole
            }
            Err(e) => {
                rec.error = Some(e.to_string());
                return rec;
            }
        };
        rec.nodata_pixels = cut.nodata_pixels;
        rec.encoding = cut.encoding;
        if task.exists {
            rec.status = ChipStatus::Measured;
            return rec;
        }
        if self.opts.skip_empty && cut.nodata_pixels == Some(rec.total_pixels) {
            rec.status = ChipStatus::Empty;
            rec.encoding = Encoding::None;
            return rec;
        }
        let path = self.job.out_dir.join(&task.name);
        match cut.jpeg {
            Some(bytes) if self.uploads.is_some() => {
                let len = bytes.len() as u64;
                let uploads = self.uploads.as_ref().expect("checked");
                match uploads.put(task.name.clone(), &path.display().to_string(), bytes) {
                    Ok(()) => {
                        rec.status = ChipStatus::Written;
                        rec.bytes = len;
                    }
                    Err(e) => rec.error = Some(format!("{}: {e}", path.display())),
                }
            }
            Some(bytes) => match write_atomic(&path, &bytes) {
                Ok(()) => {
                    rec.status = ChipStatus::Written;
                    rec.bytes = bytes.len() as u64;
                }
                Err(e) => rec.error = Some(e.to_string()),
            },
            None => rec.error = Some("internal: nothing was encoded".into()),
        }
        rec
    }

    fn chip_one(
        &self,
        task: &ChipTask,
        known: &HashSet<String>,
        scratch: &mut Scratch,
    ) -> ChipRecord {
        if task.exists && known.contains(&task.name) {
            return self.record(task, ChipStatus::Skipped);
        }
        if self.whole_cog.get().is_some() {
            return self.record(task, ChipStatus::Failed); // dropped: the COG fails as a whole
        }
        let write = !task.exists;
        let w = task.window;
        let whole_tile = self.jpeg_tiles()
            && self.aligned_to_chunks(w.width)
            && w.width == self.level().chunk_width
            && w.col_off.is_multiple_of(w.width)
            && w.row_off.is_multiple_of(w.height);
        let cut = if whole_tile {
            self.cut_whole_jpeg_tile(w, write, scratch)
        } else {
            let bands = usize::from(self.level().bands);
            self.cog.read_window_u8(0, w).and_then(|px| {
                self.cut_pixels(
                    &px,
                    w.width,
                    w.height,
                    w.width as usize * bands,
                    bands,
                    write,
                )
            })
        };
        self.finish(task, cut)
    }

    /// Chips smaller than a chunk: decode the chunk once and cut every chip from it.
    fn chip_group(
        &self,
        cx: u32,
        cy: u32,
        group: &[&ChipTask],
        known: &HashSet<String>,
        progress: &AtomicU64,
    ) -> Vec<ChipRecord> {
        let todo: Vec<&&ChipTask> = group
            .iter()
            .filter(|t| !(t.exists && known.contains(&t.name)))
            .collect();
        let decoded = if todo.is_empty() || self.whole_cog.get().is_some() {
            None
        } else {
            match self.cog.decode_chunk_u8(0, cx, cy) {
                Err(e) if e.is_whole_image() => {
                    let _ = self.whole_cog.set(e);
                    None
                }
                d => Some(d),
            }
        };
        let l = self.level();
        let bands = usize::from(l.bands);
        let pitch = l.chunk_width as usize * bands;
        group
            .iter()
            .map(|task| {
                progress.fetch_add(1, Ordering::Relaxed);
                if task.exists && known.contains(&task.name) {
                    return self.record(task, ChipStatus::Skipped);
                }
                let cut = match decoded.as_ref() {
                    // The COG fails as a whole: this record is dropped.
                    None => return self.record(task, ChipStatus::Failed),
                    Some(Err(e)) => {
                        let mut rec = self.record(task, ChipStatus::Failed);
                        rec.error = Some(e.to_string());
                        return rec;
                    }
                    Some(Ok(px)) => {
                        let w = task.window;
                        let x = (w.col_off - cx * l.chunk_width) as usize;
                        let y = (w.row_off - cy * l.chunk_height) as usize;
                        self.cut_pixels(
                            &px[y * pitch + x * bands..],
                            w.width,
                            w.height,
                            pitch,
                            bands,
                            !task.exists,
                        )
                    }
                };
                self.finish(task, cut)
            })
            .collect()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Chips get the mode an ordinary file gets (0o666 less the umask), like the Python side's
    /// artefacts (`fsutil.file_mode`): readable by others under umask 022.
    #[test]
    fn write_atomic_follows_the_umask() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .expect("Umask: in /proc/self/status");
        let dir = std::env::temp_dir().join(format!("imagesim-chip-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("Z7-12002022303213012_ABC.jpg");
        write_atomic(&path, b"jpeg").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o666 & !umask);
    }
}
