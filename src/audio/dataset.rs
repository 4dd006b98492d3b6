//! LibriMix-style directories: `DIR/mix/*.wav` with references `DIR/s1/*.wav`,
//! `DIR/s2/*.wav`, ... matched by file name; and a builder for enhancement sets.
use super::wav;
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Example {
    pub name: String,
    pub mix: Vec<f32>,
    /// References s1, s2, ... (empty when the directory has none).
    pub sources: Vec<Vec<f32>>,
}

fn wavs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| wav::is_audio(p))
        .collect();
    v.sort();
    Ok(v)
}

/// Loads every mixture of `dir` with its references, at `rate` Hz.
///
/// Errors: [`Error::Io`] when `dir/mix` is missing; [`Error::Audio`] when a reference of a
/// mixture is missing or has another length.
pub fn load(dir: &Path, rate: u32) -> Result<Vec<Example>> {
    let mix_dir = dir.join("mix");
    let mut src_dirs = vec![];
    for k in 1.. {
        let d = dir.join(format!("s{k}"));
        if !d.is_dir() {
            break;
        }
        src_dirs.push(d);
    }
    let mut out = vec![];
    for p in wavs(&mix_dir)? {
        let name = p.file_name().expect("file").to_string_lossy().into_owned();
        let mix = wav::read_at(&p, rate)?;
        let mut sources = vec![];
        for d in &src_dirs {
            let sp = d.join(&name);
            if !sp.exists() {
                return Err(Error::Audio {
                    path: sp,
                    msg: format!("reference for mixture {name} is missing"),
                });
            }
            let s = wav::read_at(&sp, rate)?;
            if s.len() != mix.len() {
                return Err(Error::Audio {
                    path: sp,
                    msg: format!("{} samples, the mixture has {}", s.len(), mix.len()),
                });
            }
            sources.push(s);
        }
        out.push(Example { name, mix, sources });
    }
    if out.is_empty() {
        return Err(Error::Audio {
            path: mix_dir,
            msg: "no .wav mixtures".into(),
        });
    }
    Ok(out)
}

fn energy(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

/// Builds an enhancement set: every speech file mixed with noise at every SNR (dB).
/// Noise files are used in turn, from a random offset (seeded), looped when shorter.
/// Writes `out/mix/NAME_snrX.wav` and the clean reference `out/s1/NAME_snrX.wav`.
///
/// With `holdout = Some(n)`, every n-th speech file and every n-th noise file (sorted by
/// name, counting from the n-th) go to a held-out set `out/test/`, the rest to `out/train/`:
/// the two sets share no utterance and no noise recording. Returns the number of mixtures
/// written per set (`[all]`, or `[train, test]`).
///
/// Errors: unreadable WAVs; no noise files; with a holdout, fewer than n speech or noise files.
pub fn build_enhancement(
    speech: &Path,
    noise: &Path,
    out: &Path,
    snrs: &[f64],
    rate: u32,
    seed: u64,
    holdout: Option<usize>,
) -> Result<Vec<usize>> {
    let speech_files = wavs(speech)?;
    let noise_files = wavs(noise)?;
    let Some(n) = holdout else {
        return Ok(vec![mix_files(
            &speech_files,
            &noise_files,
            out,
            snrs,
            rate,
            seed,
        )?]);
    };
    let split = |files: &[PathBuf], dir: &Path| -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        if n < 2 || files.len() < n {
            return Err(Error::Audio {
                path: dir.into(),
                msg: format!(
                    "a holdout of every {n}-th file needs n >= 2 and at least {n} files, found {}",
                    files.len()
                ),
            });
        }
        let (test, train): (Vec<_>, Vec<_>) =
            files.iter().enumerate().partition(|(i, _)| i % n == n - 1);
        let strip = |v: Vec<(usize, &PathBuf)>| v.into_iter().map(|(_, p)| p.clone()).collect();
        Ok((strip(train), strip(test)))
    };
    let (s_train, s_test) = split(&speech_files, speech)?;
    let (n_train, n_test) = split(&noise_files, noise)?;
    Ok(vec![
        mix_files(&s_train, &n_train, &out.join("train"), snrs, rate, seed)?,
        mix_files(&s_test, &n_test, &out.join("test"), snrs, rate, seed ^ 1)?,
    ])
}

fn mix_files(
    speech: &[PathBuf],
    noise: &[PathBuf],
    out: &Path,
    snrs: &[f64],
    rate: u32,
    seed: u64,
) -> Result<usize> {
    let noises: Vec<Vec<f32>> = noise
        .iter()
        .map(|p| wav::read_at(p, rate))
        .collect::<Result<_>>()?;
    if noises.is_empty() {
        return Err(Error::Audio {
            path: out.into(),
            msg: "no noise .wav files".into(),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut count = 0;
    for (i, p) in speech.iter().enumerate() {
        let s = wav::read_at(p, rate)?;
        let stem = p.file_stem().expect("file").to_string_lossy().into_owned();
        for &snr in snrs {
            let nz = &noises[(i + count) % noises.len()];
            let off = rng.random_range(0..nz.len().max(1));
            let n: Vec<f32> = (0..s.len()).map(|t| nz[(off + t) % nz.len()]).collect();
            let gain =
                (energy(&s) / (energy(&n).max(1e-12) * 10f64.powf(snr / 10.0))).sqrt() as f32;
            let mut mix: Vec<f32> = s.iter().zip(&n).map(|(&a, &b)| a + gain * b).collect();
            let peak = mix.iter().chain(&s).fold(0f32, |m, &v| m.max(v.abs()));
            let norm = if peak > 0.99 { 0.99 / peak } else { 1.0 };
            mix.iter_mut().for_each(|v| *v *= norm);
            let clean: Vec<f32> = s.iter().map(|&v| v * norm).collect();
            let name = format!("{stem}_snr{snr}.wav");
            wav::write(&out.join("mix").join(&name), &mix, rate)?;
            wav::write(&out.join("s1").join(&name), &clean, rate)?;
            count += 1;
        }
    }
    Ok(count)
}

/// The mixing conditions of one mixture a split set holds ([`CONDITIONS_FILE`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Condition {
    pub speaker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<String>,
    pub speech: PathBuf,
    pub noise_category: String,
    pub noise: PathBuf,
    pub snr_db: f64,
}

/// Name of the file, beside `mix/`, that maps each mixture's file name to its [`Condition`].
pub const CONDITIONS_FILE: &str = "conditions.json";

/// Reads a set's [`CONDITIONS_FILE`], when there is one.
///
/// Errors: a file that exists but does not parse.
pub fn conditions(dir: &Path) -> Result<Option<std::collections::BTreeMap<String, Condition>>> {
    let p = dir.join(CONDITIONS_FILE);
    if !p.exists() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&s).map(Some).map_err(Error::json(&p))
}

/// Writes `count` mixtures of one split of a corpus to `out` (LibriMix layout: `mix/`,
/// `s1/`), with its [`CONDITIONS_FILE`] and its sources ([`super::corpus::SOURCES_FILE`]).
/// Mixture `i` takes the speakers in a seeded shuffled order (files of one speaker in
/// turn), the noise categories likewise, and SNR `snrs[i % len]`; speech is cropped to at
/// most `seconds` (seeded offset), noise taken from a seeded offset and looped when
/// shorter; a mixture whose peak would exceed 0.99 is scaled down with its reference.
///
/// Errors: unreadable audio; an empty split; no SNR.
pub fn build_split(
    c: &super::corpus::Corpus,
    out: &Path,
    count: usize,
    snrs: &[f64],
    seconds: f64,
    rate: u32,
    seed: u64,
) -> Result<usize> {
    use rand::seq::SliceRandom;
    use std::collections::BTreeMap;
    if c.speech.is_empty() || c.noise.is_empty() || snrs.is_empty() {
        return Err(Error::Audio {
            path: out.into(),
            msg: "a split needs speech, noise and at least one SNR".into(),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // round robin over groups, each group's files in turn
    let order = |items: &[super::corpus::Source], rng: &mut rand_chacha::ChaCha8Rng| {
        let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in items.iter().enumerate() {
            by.entry(s.group.as_str()).or_default().push(i);
        }
        let mut groups: Vec<Vec<usize>> = by.into_values().collect();
        groups.shuffle(rng);
        (0..count)
            .map(|k| {
                let g = &groups[k % groups.len()];
                g[(k / groups.len()) % g.len()]
            })
            .collect::<Vec<usize>>()
    };
    let speech_order = order(&c.speech, &mut rng);
    let noise_order = order(&c.noise, &mut rng);
    let mut noise_cache: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
    let mut conditions: BTreeMap<String, Condition> = BTreeMap::new();
    let max_len = (seconds * rate as f64).round().max(1.0) as usize;
    for i in 0..count {
        let sp = &c.speech[speech_order[i]];
        let ns = &c.noise[noise_order[i]];
        let mut s = wav::read_at(&sp.path, rate)?;
        if s.len() > max_len {
            let off = rng.random_range(0..=s.len() - max_len);
            s = s[off..off + max_len].to_vec();
        }
        if !noise_cache.contains_key(&noise_order[i]) {
            noise_cache.insert(noise_order[i], wav::read_at(&ns.path, rate)?);
        }
        let nz = &noise_cache[&noise_order[i]];
        if nz.is_empty() || energy(nz) <= 0.0 {
            return Err(Error::Audio {
                path: ns.path.clone(),
                msg: "silent noise file".into(),
            });
        }
        let snr = snrs[i % snrs.len()];
        let off = rng.random_range(0..nz.len());
        let n: Vec<f32> = (0..s.len()).map(|t| nz[(off + t) % nz.len()]).collect();
        let gain = (energy(&s) / (energy(&n).max(1e-12) * 10f64.powf(snr / 10.0))).sqrt() as f32;
        let mut mix: Vec<f32> = s.iter().zip(&n).map(|(&a, &b)| a + gain * b).collect();
        let peak = mix.iter().chain(&s).fold(0f32, |m, &v| m.max(v.abs()));
        let norm = if peak > 0.99 { 0.99 / peak } else { 1.0 };
        mix.iter_mut().for_each(|v| *v *= norm);
        let clean: Vec<f32> = s.iter().map(|&v| v * norm).collect();
        let name = format!("{i:04}_{}_{}_snr{snr}.wav", sp.group, ns.group);
        wav::write(&out.join("mix").join(&name), &mix, rate)?;
        wav::write(&out.join("s1").join(&name), &clean, rate)?;
        conditions.insert(
            name,
            Condition {
                speaker: sp.group.clone(),
                sex: sp.sex.clone(),
                speech: sp.path.clone(),
                noise_category: ns.group.clone(),
                noise: ns.path.clone(),
                snr_db: snr,
            },
        );
    }
    crate::onnx::write_atomic(
        &out.join(CONDITIONS_FILE),
        serde_json::to_string_pretty(&conditions)
            .map_err(Error::json(out.join(CONDITIONS_FILE)))?
            .as_bytes(),
    )?;
    crate::onnx::write_atomic(
        &out.join(super::corpus::SOURCES_FILE),
        serde_json::to_string_pretty(c)
            .map_err(Error::json(out.join(super::corpus::SOURCES_FILE)))?
            .as_bytes(),
    )?;
    Ok(count)
}
