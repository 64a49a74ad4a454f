//! Reed-Solomon erasure coding over GF(2^8), wire-compatible with GameStream hosts.
//!
//! Hosts (Sunshine through nanors, Nvidia's GameStream) and moonlight-common-c
//! use a systematic code whose parity rows form a Cauchy matrix:
//! `P[j][i] = 1 / ((parity_shards + i) XOR j)` over GF(2^8) with the
//! polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d). Parity shard `j` is
//! `sum_i P[j][i] * data[i]`. Audio uses the same field with a fixed 2x4
//! parity matrix ([`AUDIO_PARITY`]), which is not the Cauchy one.
//!
//! No crate on crates.io builds this matrix (`reed-solomon-erasure` derives its
//! parity rows from a Vandermonde matrix, so its parity bytes differ), hence
//! this small implementation; the known-answer test below checks it against
//! parity computed by nanors itself.

use thiserror::Error;

/// Most shards (data + parity) one block may have.
pub const MAX_SHARDS: usize = 255;

/// The parity matrix hosts use for audio FEC (4 data, 2 parity shards).
pub const AUDIO_PARITY: [u8; 8] = [0x77, 0x40, 0x38, 0x0e, 0xc7, 0xa7, 0x0d, 0x6c];

/// Why a code could not be built or a block not be recovered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FecError {
    #[error("invalid shard counts: {data} data + {parity} parity")]
    InvalidShape { data: usize, parity: usize },
    #[error("{missing} shards missing, only {parity} parity shards")]
    TooManyMissing { missing: usize, parity: usize },
    #[error("shards of unequal length")]
    UnequalShards,
}

struct Tables {
    exp: [u8; 512],
    log: [u8; 256],
}

const fn build_tables() -> Tables {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    while i < 512 {
        exp[i] = exp[i - 255];
        i += 1;
    }
    Tables { exp, log }
}

static TABLES: Tables = build_tables();

/// Multiplication in GF(2^8).
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    TABLES.exp[TABLES.log[a as usize] as usize + TABLES.log[b as usize] as usize]
}

/// Multiplicative inverse in GF(2^8); `inv(0)` is 0, as in nanors' table.
pub fn inv(a: u8) -> u8 {
    if a == 0 {
        return 0;
    }
    TABLES.exp[255 - TABLES.log[a as usize] as usize]
}

/// `dst ^= c * src`, byte by byte.
fn mul_add(dst: &mut [u8], src: &[u8], c: u8) {
    match c {
        0 => {}
        1 => dst.iter_mut().zip(src).for_each(|(d, s)| *d ^= s),
        _ => {
            let row = mul_row(c);
            dst.iter_mut()
                .zip(src)
                .for_each(|(d, s)| *d ^= row[*s as usize]);
        }
    }
}

fn mul_row(c: u8) -> [u8; 256] {
    let mut row = [0u8; 256];
    for (s, r) in row.iter_mut().enumerate() {
        *r = mul(c, s as u8);
    }
    row
}

/// A code with `data` data shards and `parity` parity shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReedSolomon {
    data: usize,
    parity: usize,
    /// `parity` rows of `data` coefficients.
    matrix: Vec<u8>,
}

impl ReedSolomon {
    /// The Cauchy code hosts use for video.
    pub fn new(data: usize, parity: usize) -> Result<Self, FecError> {
        if data == 0 || parity == 0 || data + parity > MAX_SHARDS {
            return Err(FecError::InvalidShape { data, parity });
        }
        let mut matrix = Vec::with_capacity(data * parity);
        for j in 0..parity {
            for i in 0..data {
                matrix.push(inv(((parity + i) ^ j) as u8));
            }
        }
        Ok(Self {
            data,
            parity,
            matrix,
        })
    }

    /// The audio code: 4 data and 2 parity shards with [`AUDIO_PARITY`].
    pub fn audio() -> Self {
        Self {
            data: 4,
            parity: 2,
            matrix: AUDIO_PARITY.to_vec(),
        }
    }

    pub fn data_shards(&self) -> usize {
        self.data
    }

    pub fn parity_shards(&self) -> usize {
        self.parity
    }

    /// Computes parity shards from data shards (all the same length).
    pub fn encode<D: AsRef<[u8]>>(&self, data: &[D]) -> Result<Vec<Vec<u8>>, FecError> {
        if data.len() != self.data {
            return Err(FecError::InvalidShape {
                data: data.len(),
                parity: self.parity,
            });
        }
        let len = data[0].as_ref().len();
        if data.iter().any(|d| d.as_ref().len() != len) {
            return Err(FecError::UnequalShards);
        }
        let mut out = vec![vec![0u8; len]; self.parity];
        for (j, shard) in out.iter_mut().enumerate() {
            for (i, d) in data.iter().enumerate() {
                mul_add(shard, d.as_ref(), self.matrix[j * self.data + i]);
            }
        }
        Ok(out)
    }

    /// Fills in missing data shards. `shards` holds data shards then parity
    /// shards (`data + parity` entries), `None` where a shard was lost. On
    /// success every data entry is `Some`; parity entries are left as given.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), FecError> {
        if shards.len() != self.data + self.parity {
            return Err(FecError::InvalidShape {
                data: self.data,
                parity: shards.len().saturating_sub(self.data),
            });
        }
        let missing: Vec<usize> = (0..self.data).filter(|&i| shards[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let len = match shards.iter().flatten().next() {
            Some(s) => s.len(),
            None => {
                return Err(FecError::TooManyMissing {
                    missing: self.data,
                    parity: self.parity,
                })
            }
        };
        if shards.iter().flatten().any(|s| s.len() != len) {
            return Err(FecError::UnequalShards);
        }
        let parity_rows: Vec<usize> = (0..self.parity)
            .filter(|&j| shards[self.data + j].is_some())
            .take(missing.len())
            .collect();
        if parity_rows.len() < missing.len() {
            return Err(FecError::TooManyMissing {
                missing: missing.len(),
                parity: parity_rows.len(),
            });
        }
        let n = missing.len();
        // For each chosen parity row j: sum over missing i of P[j][i] * x_i
        // = parity_j - sum over present i of P[j][i] * d_i.
        let mut rhs: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut a = vec![0u8; n * n];
        for (r, &j) in parity_rows.iter().enumerate() {
            let row = &self.matrix[j * self.data..(j + 1) * self.data];
            let mut acc = shards[self.data + j].clone().unwrap_or_default();
            for (i, coef) in row.iter().enumerate() {
                match &shards[i] {
                    Some(d) => mul_add(&mut acc, d, *coef),
                    None => {
                        let c = missing.iter().position(|&m| m == i).unwrap_or(0);
                        a[r * n + c] = *coef;
                    }
                }
            }
            rhs.push(acc);
        }
        // Gauss-Jordan elimination on `a`, applying the same steps to `rhs`.
        for col in 0..n {
            let pivot =
                (col..n)
                    .find(|&r| a[r * n + col] != 0)
                    .ok_or(FecError::TooManyMissing {
                        missing: n,
                        parity: self.parity,
                    })?;
            if pivot != col {
                for k in 0..n {
                    a.swap(pivot * n + k, col * n + k);
                }
                rhs.swap(pivot, col);
            }
            let scale = inv(a[col * n + col]);
            for k in 0..n {
                a[col * n + k] = mul(a[col * n + k], scale);
            }
            let scaled: Vec<u8> = {
                let row = mul_row(scale);
                rhs[col].iter().map(|b| row[*b as usize]).collect()
            };
            rhs[col] = scaled;
            for r in 0..n {
                let f = a[r * n + col];
                if r == col || f == 0 {
                    continue;
                }
                for k in 0..n {
                    a[r * n + k] ^= mul(f, a[col * n + k]);
                }
                let (src, dst) = if r < col {
                    let (lo, hi) = rhs.split_at_mut(col);
                    (&hi[0], &mut lo[r])
                } else {
                    let (lo, hi) = rhs.split_at_mut(r);
                    (&lo[col], &mut hi[0])
                };
                mul_add(dst, src, f);
            }
        }
        for (k, value) in missing.into_iter().zip(rhs) {
            shards[k] = Some(value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_data(ds: usize, bs: usize) -> Vec<Vec<u8>> {
        (0..ds)
            .map(|i| {
                (0..bs)
                    .map(|j| (i * 37 + j * 11 + 1) as u8)
                    .collect::<Vec<u8>>()
            })
            .collect()
    }

    /// Known answer: parity computed by nanors (github.com/sleepybishop/nanors,
    /// MIT, the Reed-Solomon code moonlight-common-c and Sunshine link) with
    /// `reed_solomon_new(5, 3)` and `reed_solomon_encode` over 5 data shards of
    /// 8 bytes, byte `j` of shard `i` being `i*37 + j*11 + 1` (mod 256).
    #[test]
    fn parity_matches_nanors_byte_for_byte() {
        let rs = ReedSolomon::new(5, 3).unwrap();
        let parity = rs.encode(&sample_data(5, 8)).unwrap();
        let hex: Vec<String> = parity.iter().map(hex::encode).collect();
        assert_eq!(
            hex,
            ["dfb16fcde4475e97", "5e8b7ba20e505eac", "f6fcf2b29bb2b303"]
        );
    }

    #[test]
    fn field_inverse_and_product_agree() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a = {a}");
        }
        assert_eq!(mul(0x80, 2), 0x1d);
    }

    #[test]
    fn recovers_any_set_of_lost_data_shards_up_to_parity_count() {
        let (ds, ps) = (10, 4);
        let rs = ReedSolomon::new(ds, ps).unwrap();
        let data = sample_data(ds, 64);
        let parity = rs.encode(&data).unwrap();
        let full: Vec<Option<Vec<u8>>> = data.iter().chain(&parity).cloned().map(Some).collect();
        // Every combination of up to 4 lost shards among the first 8 plus some parity.
        let mut checked = 0;
        for mask in 0u32..(1 << 14) {
            if mask.count_ones() > 4 {
                continue;
            }
            let mut shards = full.clone();
            for (k, s) in shards.iter_mut().enumerate() {
                if mask & (1 << k) != 0 {
                    *s = None;
                }
            }
            rs.reconstruct(&mut shards).unwrap();
            for i in 0..ds {
                assert_eq!(shards[i].as_deref(), Some(&data[i][..]), "mask {mask:b}");
            }
            checked += 1;
        }
        assert!(checked > 1000);
    }

    #[test]
    fn too_many_losses_is_an_error_not_garbage() {
        let rs = ReedSolomon::new(4, 2).unwrap();
        let data = sample_data(4, 16);
        let parity = rs.encode(&data).unwrap();
        let mut shards: Vec<Option<Vec<u8>>> =
            data.iter().chain(&parity).cloned().map(Some).collect();
        shards[0] = None;
        shards[1] = None;
        shards[4] = None;
        assert_eq!(
            rs.reconstruct(&mut shards),
            Err(FecError::TooManyMissing {
                missing: 2,
                parity: 1
            })
        );
    }

    #[test]
    fn audio_code_recovers_two_lost_packets() {
        let rs = ReedSolomon::audio();
        let data = sample_data(4, 20);
        let parity = rs.encode(&data).unwrap();
        let mut shards: Vec<Option<Vec<u8>>> =
            data.iter().chain(&parity).cloned().map(Some).collect();
        shards[1] = None;
        shards[3] = None;
        rs.reconstruct(&mut shards).unwrap();
        assert_eq!(shards[1].as_deref(), Some(&data[1][..]));
        assert_eq!(shards[3].as_deref(), Some(&data[3][..]));
    }

    #[test]
    fn shapes_hosts_cannot_use_are_refused() {
        assert!(ReedSolomon::new(0, 1).is_err());
        assert!(ReedSolomon::new(200, 56).is_err());
        assert!(ReedSolomon::new(200, 55).is_ok());
    }
}
