//! Exact area of polygon rings inside every square of a regular grid, in one pass.
//!
//! The chips of a level-12 cell form an aligned grid, so a vector mask (cloud, water, …) can be
//! measured for every chip at once instead of one polygon intersection per chip. The area of a
//! closed ring inside a square is the integral over the square of the ring's winding number; summed
//! edge by edge that is `-∫ (clamp(y, bottom, top) - bottom) dx` along each edge (counter-clockwise
//! rings count positive). Each edge is split at the column lines; within a column a piece adds its
//! exact trapezoid to the rows it crosses and a full-height term `cell · dx` to every row below it,
//! the latter through a difference array summed down each column at the end. Cost: O(edges +
//! column and row crossings + squares), exact up to floating-point rounding.
use crate::error::{Error, Result};

/// Most squares a grid may have (8,192 × 8,192: a level-12 cell at zoom 25).
pub const MAX_SQUARES: usize = 1 << 26;

/// Largest coordinate magnitude taken (anything beyond is not a map coordinate).
const MAX_COORD: f64 = 1e300;

fn coord_ok(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_COORD
}

/// A regular grid of `nx × ny` squares of side `cell`, whose north-west corner is `(x0, y_top)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridSpec {
    /// West edge (x of the first column's left side).
    pub x0: f64,
    /// North edge (y of the first row's top side).
    pub y_top: f64,
    /// Side of a square, in the coordinates' units (metres).
    pub cell: f64,
    pub nx: usize,
    pub ny: usize,
}

impl GridSpec {
    fn check(&self) -> Result<usize> {
        if !(coord_ok(self.x0) && coord_ok(self.y_top)) {
            return Err(Error::InvalidArgument(format!(
                "grid origin ({}, {}) is not finite or absurdly large",
                self.x0, self.y_top
            )));
        }
        if !(self.cell.is_finite() && self.cell > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "`cell` {}: must be a finite size > 0",
                self.cell
            )));
        }
        if self.nx == 0 || self.ny == 0 {
            return Err(Error::InvalidArgument(format!(
                "grid of {} × {} squares: `nx` and `ny` must be at least 1",
                self.nx, self.ny
            )));
        }
        match self.nx.checked_mul(self.ny) {
            Some(n) if n <= MAX_SQUARES => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "grid of {} × {} squares: at most {MAX_SQUARES} squares",
                    self.nx, self.ny
                )))
            }
        }
        // Areas up to the whole grid's must stay finite.
        if !(self.cell * self.nx as f64 * self.cell * self.ny as f64).is_finite() {
            return Err(Error::InvalidArgument(format!(
                "grid of {} × {} squares of {} is too large",
                self.nx, self.ny, self.cell
            )));
        }
        Ok(self.nx * self.ny)
    }
}

fn check_rings(xy: &[f64], ring_offsets: &[usize]) -> Result<()> {
    if !xy.len().is_multiple_of(2) {
        return Err(Error::InvalidArgument(format!(
            "ring coordinates hold {} values: need x, y pairs",
            xy.len()
        )));
    }
    // Far below f64::MAX, so differences of coordinates cannot overflow.
    if let Some(i) = xy.iter().position(|&v| !coord_ok(v)) {
        return Err(Error::InvalidArgument(format!(
            "ring point {} has a non-finite or absurdly large coordinate ({}, {})",
            i / 2,
            xy[i - i % 2],
            xy[i - i % 2 + 1]
        )));
    }
    let points = xy.len() / 2;
    if ring_offsets.is_empty() {
        return Err(Error::InvalidArgument(
            "ring offsets are empty: need rings + 1 entries".into(),
        ));
    }
    for w in ring_offsets.windows(2) {
        if w[1] < w[0] {
            return Err(Error::InvalidArgument(format!(
                "ring offsets decrease ({} then {})",
                w[0], w[1]
            )));
        }
    }
    let last = ring_offsets[ring_offsets.len() - 1];
    if last > points {
        return Err(Error::InvalidArgument(format!(
            "ring offsets reach {last} but there are {points} points"
        )));
    }
    Ok(())
}

/// Per-grid accumulators: exact row terms per square and the difference array of full-height terms.
struct Acc<'g> {
    g: &'g GridSpec,
    /// Grid width and height (depth of the bottom edge) in grid-relative units.
    width: f64,
    depth: f64,
    area: Vec<f64>,
    /// `below[r * nx + c]`: full-height area added to rows `r..` of column `c`.
    below: Vec<f64>,
}

impl Acc<'_> {
    /// Row band of a depth below the top edge: -1 above the grid, `ny` below it.
    fn band(&self, d: f64) -> isize {
        if d < 0.0 {
            -1
        } else if d >= self.depth {
            self.g.ny as isize
        } else {
            ((d / self.g.cell) as isize).min(self.g.ny as isize - 1)
        }
    }

    /// An edge from `(xa, da)` to `(xb, db)` in grid-relative coordinates (x east of the west edge,
    /// d = depth south of the top edge).
    fn edge(&mut self, (xa, da): (f64, f64), (xb, db): (f64, f64)) {
        if xa == xb {
            return; // vertical or repeated point: no area under it
        }
        // Walk west to east; an eastward edge lies under the inside of a CCW ring and counts negative.
        let (w, (xl, dl), (xr, dr)) = if xa < xb {
            (-1.0, (xa, da), (xb, db))
        } else {
            (1.0, (xb, db), (xa, da))
        };
        if xr <= 0.0 || xl >= self.width {
            return;
        }
        // Interpolated by the fraction along the edge (a slope could overflow on a tiny dx).
        let at = |x: f64| {
            if x == xr {
                dr
            } else {
                dl + (dr - dl) * ((x - xl) / (xr - xl))
            }
        };
        let (x_lo, x_hi) = (xl.max(0.0), xr.min(self.width));
        let cell = self.g.cell;
        let last_col = self.g.nx - 1;
        let mut c = ((x_lo / cell) as usize).min(last_col);
        let mut x = x_lo;
        let mut d = at(x);
        loop {
            let col_right = if c == last_col {
                self.width
            } else {
                (c + 1) as f64 * cell
            };
            let x_next = x_hi.min(col_right);
            if x_next > x {
                let d_next = at(x_next);
                self.piece(c, w, (x, d), (x_next, d_next));
                x = x_next;
                d = d_next;
            }
            if x >= x_hi || c == last_col {
                break;
            }
            c += 1;
        }
    }

    /// A piece inside column `c`, west to east; split at the row lines it crosses.
    fn piece(&mut self, c: usize, w: f64, (mut x, mut d): (f64, f64), (xb, db): (f64, f64)) {
        let (mut k, kb) = (self.band(d), self.band(db));
        let cell = self.g.cell;
        while k != kb {
            // The line between band k and the next one towards kb.
            let (line, next) = if kb > k {
                ((k + 1) as f64 * cell, k + 1)
            } else {
                (k as f64 * cell, k - 1)
            };
            let line = line.min(self.depth);
            let t = ((line - d) / (db - d)).clamp(0.0, 1.0);
            let xc = (x + (xb - x) * t).clamp(x, xb);
            self.band_piece(c, k, w, xc - x, d, line);
            x = xc;
            d = line;
            k = next;
        }
        self.band_piece(c, k, w, xb - x, d, db);
    }

    /// A straight piece of width `dx` whose depth runs from `da` to `db`, all within band `k`.
    fn band_piece(&mut self, c: usize, k: isize, w: f64, dx: f64, da: f64, db: f64) {
        if dx <= 0.0 {
            return;
        }
        let (nx, ny, cell) = (self.g.nx, self.g.ny, self.g.cell);
        if k < 0 {
            self.below[c] += w * cell * dx;
            return;
        }
        let r = k as usize;
        if r >= ny {
            return;
        }
        // Height of the ring's region inside row r under each end; linear in between, so the
        // trapezoid is exact. Clamped against rounding at the band's lines.
        let bottom = (r + 1) as f64 * cell;
        let ha = (bottom - da).clamp(0.0, cell);
        let hb = (bottom - db).clamp(0.0, cell);
        self.area[r * nx + c] += w * dx * 0.5 * (ha + hb);
        if r + 1 < ny {
            self.below[(r + 1) * nx + c] += w * cell * dx;
        }
    }

    fn finish(mut self) -> Vec<f64> {
        let nx = self.g.nx;
        let mut run = vec![0.0f64; nx];
        for (row_area, row_below) in self.area.chunks_mut(nx).zip(self.below.chunks(nx)) {
            for ((a, b), acc) in row_area.iter_mut().zip(row_below).zip(run.iter_mut()) {
                *acc += b;
                *a += *acc;
            }
        }
        self.area
    }
}

/// Signed area of the rings inside each square of `grid`, row-major (north row first, west to
/// east). `xy` holds `x0, y0, x1, y1, …`; ring `i` is points `ring_offsets[i]..ring_offsets[i + 1]`
/// (the layout of `shapely.to_ragged_array`), closed or not. Counter-clockwise rings (x east,
/// y north) count positive and clockwise ones negative, so a polygon with its exterior CCW and its
/// holes CW gives its exact area per square. Rings may reach beyond the grid (only the part inside
/// counts); edges on grid lines, vertical or horizontal edges and repeated points are fine.
pub fn grid_coverage(xy: &[f64], ring_offsets: &[usize], grid: &GridSpec) -> Result<Vec<f64>> {
    let squares = grid.check()?;
    check_rings(xy, ring_offsets)?;
    let mut acc = Acc {
        g: grid,
        width: grid.cell * grid.nx as f64,
        depth: grid.cell * grid.ny as f64,
        area: vec![0.0; squares],
        below: vec![0.0; squares],
    };
    // Grid-relative coordinates keep the sums small (UTM coordinates are ~10⁶ m, squares ~10² m).
    let rel = |i: usize| (xy[2 * i] - grid.x0, grid.y_top - xy[2 * i + 1]);
    for span in ring_offsets.windows(2) {
        let (start, end) = (span[0], span[1]);
        if end - start < 2 {
            continue;
        }
        let first = rel(start);
        let mut prev = first;
        for i in start + 1..end {
            let p = rel(i);
            acc.edge(prev, p);
            prev = p;
        }
        acc.edge(prev, first); // closing edge (zero length when the ring is closed)
    }
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(x0: f64, y_top: f64, cell: f64, nx: usize, ny: usize) -> GridSpec {
        GridSpec {
            x0,
            y_top,
            cell,
            nx,
            ny,
        }
    }

    /// One ring of (x, y) points.
    fn ring(pts: &[(f64, f64)]) -> (Vec<f64>, Vec<usize>) {
        (
            pts.iter().flat_map(|&(x, y)| [x, y]).collect(),
            vec![0, pts.len()],
        )
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "square {i}: {x} vs {y}\n{a:?}\n{b:?}");
        }
    }

    const UNIT_CCW: [(f64, f64); 4] = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)];

    #[test]
    fn unit_square_on_one_square() {
        let g = grid(0.0, 1.0, 1.0, 1, 1);
        let (xy, off) = ring(&UNIT_CCW);
        close(&grid_coverage(&xy, &off, &g).unwrap(), &[1.0], 1e-12);
        // Clockwise: negative.
        let cw: Vec<_> = UNIT_CCW.iter().rev().copied().collect();
        let (xy, off) = ring(&cw);
        close(&grid_coverage(&xy, &off, &g).unwrap(), &[-1.0], 1e-12);
        // Closed explicitly, with a repeated point: the same.
        let mut closed = UNIT_CCW.to_vec();
        closed.insert(2, (1.0, 0.0));
        closed.push((0.0, 0.0));
        let (xy, off) = ring(&closed);
        close(&grid_coverage(&xy, &off, &g).unwrap(), &[1.0], 1e-12);
    }

    #[test]
    fn unit_square_offset_over_four_squares() {
        // A unit square centred on the middle of a 2 × 2 grid of unit squares: a quarter in each.
        let g = grid(0.0, 2.0, 1.0, 2, 2);
        let pts: Vec<_> = UNIT_CCW.iter().map(|&(x, y)| (x + 0.5, y + 0.5)).collect();
        let (xy, off) = ring(&pts);
        close(&grid_coverage(&xy, &off, &g).unwrap(), &[0.25; 4], 1e-12);
        // Shifted to the north-east quarter: row-major, north row first.
        let pts: Vec<_> = UNIT_CCW.iter().map(|&(x, y)| (x + 0.75, y + 0.5)).collect();
        let (xy, off) = ring(&pts);
        close(
            &grid_coverage(&xy, &off, &g).unwrap(),
            &[0.125, 0.375, 0.125, 0.375],
            1e-12,
        );
        let pts: Vec<_> = UNIT_CCW.iter().map(|&(x, y)| (x + 0.5, y + 0.9)).collect();
        let (xy, off) = ring(&pts);
        close(
            &grid_coverage(&xy, &off, &g).unwrap(),
            &[0.45, 0.45, 0.05, 0.05],
            1e-12,
        );
    }

    #[test]
    fn triangle() {
        // Right triangle (0,0) (2,0) (0,2) on a 2 × 2 grid: SW = 1, NW = SE = 0.5, NE = 0.
        let g = grid(0.0, 2.0, 1.0, 2, 2);
        let (xy, off) = ring(&[(0.0, 0.0), (2.0, 0.0), (0.0, 2.0)]);
        close(
            &grid_coverage(&xy, &off, &g).unwrap(),
            &[0.5, 0.0, 1.0, 0.5],
            1e-12,
        );
        // A triangle inside one square, away from the grid lines.
        let (xy, off) = ring(&[(1.1, 0.2), (1.9, 0.3), (1.5, 0.8)]);
        let want = 0.5 * ((1.9 - 1.1) * (0.8 - 0.2) - (1.5 - 1.1) * (0.3 - 0.2));
        close(
            &grid_coverage(&xy, &off, &g).unwrap(),
            &[0.0, 0.0, 0.0, want],
            1e-12,
        );
    }

    #[test]
    fn polygon_with_hole() {
        // 4 × 4 square with a 2 × 2 hole in the middle on a 4 × 4 grid of unit squares.
        let g = grid(10.0, 24.0, 1.0, 4, 4);
        let outer = [(10.0, 20.0), (14.0, 20.0), (14.0, 24.0), (10.0, 24.0)];
        let hole = [(11.0, 21.0), (11.0, 23.0), (13.0, 23.0), (13.0, 21.0)]; // clockwise
        let xy: Vec<f64> = outer
            .iter()
            .chain(&hole)
            .flat_map(|&(x, y)| [x, y])
            .collect();
        let got = grid_coverage(&xy, &[0, 4, 8], &g).unwrap();
        let mut want = vec![1.0; 16];
        for (r, c) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            want[r * 4 + c] = 0.0;
        }
        close(&got, &want, 1e-12);
        // A hole that half-covers squares.
        let hole = [(11.5, 21.0), (11.5, 23.0), (12.5, 23.0), (12.5, 21.0)];
        let xy: Vec<f64> = outer
            .iter()
            .chain(&hole)
            .flat_map(|&(x, y)| [x, y])
            .collect();
        let got = grid_coverage(&xy, &[0, 4, 8], &g).unwrap();
        let mut want = vec![1.0; 16];
        for (r, c) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            want[r * 4 + c] = 0.5;
        }
        close(&got, &want, 1e-12);
    }

    #[test]
    fn polygon_bigger_than_the_grid() {
        let g = grid(500_000.0, 4_000_000.0, 156.25, 32, 32);
        let (xy, off) = ring(&[
            (400_000.0, 3_900_000.0),
            (600_000.0, 3_950_000.0),
            (650_000.0, 4_100_000.0),
            (450_000.0, 4_200_000.0),
        ]);
        let got = grid_coverage(&xy, &off, &g).unwrap();
        close(&got, &vec![156.25 * 156.25; 32 * 32], 1e-6);
    }

    #[test]
    fn edges_on_grid_lines() {
        let g = grid(0.0, 3.0, 1.0, 3, 3);
        // Exactly the middle square, edges on the grid lines.
        let (xy, off) = ring(&[(1.0, 1.0), (2.0, 1.0), (2.0, 2.0), (1.0, 2.0)]);
        let mut want = vec![0.0; 9];
        want[4] = 1.0;
        close(&grid_coverage(&xy, &off, &g).unwrap(), &want, 0.0);
        // An L along grid lines and the grid's border.
        let (xy, off) = ring(&[
            (0.0, 0.0),
            (3.0, 0.0),
            (3.0, 1.0),
            (1.0, 1.0),
            (1.0, 3.0),
            (0.0, 3.0),
        ]);
        let want = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        close(&grid_coverage(&xy, &off, &g).unwrap(), &want, 0.0);
        // A diagonal through grid corners.
        let (xy, off) = ring(&[(0.0, 0.0), (3.0, 3.0), (0.0, 3.0)]);
        let want = [1.0, 1.0, 0.5, 1.0, 0.5, 0.0, 0.5, 0.0, 0.0];
        close(&grid_coverage(&xy, &off, &g).unwrap(), &want, 1e-12);
    }

    #[test]
    fn outside_and_partly_outside() {
        let g = grid(0.0, 2.0, 1.0, 2, 2);
        // Wholly outside: to each side, above and below.
        for (dx, dy) in [(-5.0, 0.0), (5.0, 0.0), (0.0, 5.0), (0.0, -5.0)] {
            let pts: Vec<_> = UNIT_CCW.iter().map(|&(x, y)| (x + dx, y + dy)).collect();
            let (xy, off) = ring(&pts);
            close(&grid_coverage(&xy, &off, &g).unwrap(), &[0.0; 4], 0.0);
        }
        // A band crossing the grid west to east through the middle, far beyond both sides.
        let (xy, off) = ring(&[(-100.0, 0.5), (100.0, 0.5), (100.0, 1.5), (-100.0, 1.5)]);
        close(
            &grid_coverage(&xy, &off, &g).unwrap(),
            &[0.5, 0.5, 0.5, 0.5],
            1e-12,
        );
    }

    #[test]
    fn near_vertical_edges_with_subnormal_width() {
        // An edge only a subnormal step wide but a whole row high: no overflow, no NaN.
        let g = grid(0.0, 2.0, 1.0, 2, 2);
        let tiny = 1e-320;
        let (xy, off) = ring(&[(0.0, 0.0), (tiny, 2.0), (1.0, 2.0), (1.0, 0.0)]);
        let got = grid_coverage(&xy, &off, &g).unwrap();
        close(&got, &[-1.0, 0.0, -1.0, 0.0], 1e-12);
    }

    #[test]
    fn degenerate_rings_add_nothing() {
        let g = grid(0.0, 2.0, 1.0, 2, 2);
        let xy = [0.5, 0.5, 1.5, 1.5, 0.2, 0.2];
        // Empty, single-point and two-point rings, and no rings at all.
        let got = grid_coverage(&xy, &[0, 0, 1, 3], &g).unwrap();
        close(&got, &[0.0; 4], 1e-12);
        assert_eq!(grid_coverage(&[], &[0], &g).unwrap(), vec![0.0; 4]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let g = grid(0.0, 1.0, 1.0, 1, 1);
        let (xy, off) = ring(&UNIT_CCW);
        let bad = |r: Result<Vec<f64>>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(bad(grid_coverage(&xy, &[0, 5], &g)));
        assert!(bad(grid_coverage(&xy, &[0, 3, 2], &g)));
        assert!(bad(grid_coverage(&xy, &[], &g)));
        assert!(bad(grid_coverage(&xy[..7], &off, &g)));
        let mut nan = xy.clone();
        nan[3] = f64::NAN;
        assert!(bad(grid_coverage(&nan, &off, &g)));
        nan[3] = f64::INFINITY;
        assert!(bad(grid_coverage(&nan, &off, &g)));
        nan[3] = 1e305;
        assert!(bad(grid_coverage(&nan, &off, &g)));
        for g in [
            grid(0.0, 1.0, 1.0, 0, 1),
            grid(0.0, 1.0, 1.0, 1, 0),
            grid(0.0, 1.0, 0.0, 1, 1),
            grid(0.0, 1.0, -1.0, 1, 1),
            grid(0.0, 1.0, f64::NAN, 1, 1),
            grid(f64::NAN, 1.0, 1.0, 1, 1),
            grid(0.0, 1.0, 1.0, 1 << 14, 1 << 13),
            grid(0.0, 1.0, 1.0, usize::MAX, 2),
            grid(0.0, 1.0, 1e200, 2, 2),
        ] {
            assert!(bad(grid_coverage(&xy, &off, &g)), "{g:?}");
        }
        // The largest allowed grid passes the checks (not run here: it would allocate 1 GiB).
        assert_eq!(
            grid(0.0, 1.0, 1.0, 1 << 13, 1 << 13).check().unwrap(),
            MAX_SQUARES
        );
    }

    // --- brute force: Sutherland–Hodgman clip of the ring against each square + shoelace ---

    fn shoelace(p: &[(f64, f64)]) -> f64 {
        let n = p.len();
        (0..n)
            .map(|i| {
                let (a, b) = (p[i], p[(i + 1) % n]);
                a.0 * b.1 - b.0 * a.1
            })
            .sum::<f64>()
            * 0.5
    }

    /// Clip against the half-plane `inside(p)`, with `cut(a, b)` the crossing point of an edge.
    fn clip_half(
        p: &[(f64, f64)],
        inside: impl Fn((f64, f64)) -> bool,
        cut: impl Fn((f64, f64), (f64, f64)) -> (f64, f64),
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for i in 0..p.len() {
            let (a, b) = (p[i], p[(i + 1) % p.len()]);
            match (inside(a), inside(b)) {
                (true, true) => out.push(b),
                (true, false) => out.push(cut(a, b)),
                (false, true) => {
                    out.push(cut(a, b));
                    out.push(b);
                }
                (false, false) => {}
            }
        }
        out
    }

    fn clip_box(p: &[(f64, f64)], (x0, y0, x1, y1): (f64, f64, f64, f64)) -> Vec<(f64, f64)> {
        let at_x = |x: f64| {
            move |a: (f64, f64), b: (f64, f64)| (x, a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0))
        };
        let at_y = |y: f64| {
            move |a: (f64, f64), b: (f64, f64)| (a.0 + (b.0 - a.0) * (y - a.1) / (b.1 - a.1), y)
        };
        let p = clip_half(p, |q| q.0 >= x0, at_x(x0));
        let p = clip_half(&p, |q| q.0 <= x1, at_x(x1));
        let p = clip_half(&p, |q| q.1 >= y0, at_y(y0));
        clip_half(&p, |q| q.1 <= y1, at_y(y1))
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            // xorshift64*: deterministic, no dependency.
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn random_polygons_match_a_brute_force_clip() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for trial in 0..200u32 {
            let (nx, ny) = (
                1 + (rng.next() * 7.0) as usize,
                1 + (rng.next() * 7.0) as usize,
            );
            let cell = 10.0 + rng.next() * 200.0;
            let g = grid(
                600_000.0 + rng.next() * 1e4,
                4_000_000.0 + rng.next() * 1e4,
                cell,
                nx,
                ny,
            );
            let (w, h) = (nx as f64 * cell, ny as f64 * cell);
            // Star-shaped (simple) rings around a point in or near the grid, some much larger than
            // it; every other trial a self-intersecting ring (signed winding areas still add up).
            let mut xy = Vec::new();
            let mut offsets = vec![0];
            let mut rings = Vec::new();
            for _ in 0..1 + (rng.next() * 3.0) as usize {
                let cx = g.x0 - 0.2 * w + rng.next() * 1.4 * w;
                let cy = g.y_top - h * 1.2 + rng.next() * 1.4 * h;
                let scale =
                    (w.max(h)) * (0.05 + rng.next() * if rng.next() < 0.2 { 3.0 } else { 0.7 });
                let n = 3 + (rng.next() * 40.0) as usize;
                let mut pts = Vec::with_capacity(n);
                let mut angles: Vec<f64> =
                    (0..n).map(|_| rng.next() * std::f64::consts::TAU).collect();
                if trial.is_multiple_of(2) {
                    angles.sort_by(f64::total_cmp);
                }
                let cw = rng.next() < 0.3;
                for a in angles {
                    let a = if cw { -a } else { a };
                    let r = scale * (0.2 + rng.next());
                    pts.push((cx + r * a.cos(), cy + r * a.sin()));
                }
                xy.extend(pts.iter().flat_map(|&(x, y)| [x, y]));
                offsets.push(xy.len() / 2);
                rings.push(pts);
            }
            let got = grid_coverage(&xy, &offsets, &g).unwrap();
            let mut want = vec![0.0; nx * ny];
            for r in 0..ny {
                for c in 0..nx {
                    let sq = (
                        g.x0 + c as f64 * cell,
                        g.y_top - (r + 1) as f64 * cell,
                        g.x0 + (c + 1) as f64 * cell,
                        g.y_top - r as f64 * cell,
                    );
                    // Shoelace relative to the square's corner to keep the brute force accurate.
                    want[r * nx + c] = rings
                        .iter()
                        .map(|p| {
                            let clipped = clip_box(p, sq);
                            let rel: Vec<_> =
                                clipped.iter().map(|&(x, y)| (x - sq.0, y - sq.1)).collect();
                            shoelace(&rel)
                        })
                        .sum();
                }
            }
            close(&got, &want, 1e-6 * cell * cell);
        }
    }
}
