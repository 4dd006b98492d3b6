//! Training crops for the learner and fine-tuning: fixed-length windows of a LibriMix-style
//! directory's mixtures, with the references or a teacher model's outputs as targets.
use super::gumbel::Item;
use crate::audio::dataset;
use crate::error::{Error, Result};
use crate::onnx::ModelProto;
use crate::runtime::tract::TractModel;
use std::path::Path;

/// Crops of every mixture of `data`, grouped by file (sorted by name): up to
/// `crops_per_file` non-overlapping windows of `samples` samples (zero-padded when short),
/// the most energetic ones when there are more.
/// Targets `[S][samples]` are the references, or with `teacher` the teacher's outputs on the
/// same crop (label-free: no references needed), split into its S sources.
///
/// Errors: unreadable data; no references and no teacher; a teacher that does not run.
pub fn crops(
    data: &Path,
    samples: usize,
    crops_per_file: usize,
    teacher: Option<&ModelProto>,
) -> Result<Vec<Vec<Item>>> {
    crops_of(
        &dataset::load(data, 16000)?,
        data,
        samples,
        crops_per_file,
        teacher,
    )
}

/// [`crops`] of examples already loaded from `data` (named in errors).
///
/// Errors: no references and no teacher; a teacher that does not run.
pub fn crops_of(
    examples: &[dataset::Example],
    data: &Path,
    samples: usize,
    crops_per_file: usize,
    teacher: Option<&ModelProto>,
) -> Result<Vec<Vec<Item>>> {
    let teacher = teacher
        .map(|m| TractModel::new(m, &[1, 1, samples]))
        .transpose()?;
    let crop = |x: &[f32], c: usize| window(x, samples, c);
    let mut out = vec![];
    for ex in examples {
        let mut file = vec![];
        for c in chosen_windows(ex, samples, crops_per_file) {
            let input = crop(&ex.mix, c);
            let targets = match &teacher {
                Some(t) => t.run(&input)?.chunks(samples).map(<[f32]>::to_vec).collect(),
                None if ex.sources.is_empty() => {
                    return Err(Error::Audio {
                        path: data.join("mix").join(&ex.name),
                        msg: "no references (s1/, ...): use --teacher to learn from the original model's outputs".into(),
                    })
                }
                None => ex.sources.iter().map(|s| crop(s, c)).collect(),
            };
            file.push(Item { input, targets });
        }
        out.push(file);
    }
    Ok(out)
}

/// The mixture crops of `data` alone (no targets: calibration audio), in the order of
/// [`crops`], flattened: up to `crops_per_file` windows `[samples]` per mixture.
///
/// Errors: unreadable data.
pub fn mixture_crops(data: &Path, samples: usize, crops_per_file: usize) -> Result<Vec<Vec<f32>>> {
    Ok(mixture_windows(
        &dataset::load(data, 16000)?,
        samples,
        crops_per_file,
    ))
}

/// Input crops for label-free learning: [`mixture_crops`] of a LibriMix-style `data` (with
/// `mix/`), or else of every audio file under `data` (any layout, recursively, resampled to
/// 16 kHz: a directory of speech for an encoder).
///
/// Errors: unreadable data; no audio.
pub fn input_crops(data: &Path, samples: usize, crops_per_file: usize) -> Result<Vec<Vec<f32>>> {
    if data.join("mix").is_dir() {
        return mixture_crops(data, samples, crops_per_file);
    }
    let examples = crate::audio::corpus::audio_files(data)?
        .into_iter()
        .map(|f| {
            Ok(dataset::Example {
                name: f.display().to_string(),
                mix: crate::audio::wav::read_at(&f, 16000)?,
                sources: vec![],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if examples.is_empty() {
        return Err(Error::Data(format!("{}: no audio files", data.display())));
    }
    Ok(mixture_windows(&examples, samples, crops_per_file))
}

/// [`mixture_crops`] of examples already loaded.
pub fn mixture_windows(
    examples: &[dataset::Example],
    samples: usize,
    crops_per_file: usize,
) -> Vec<Vec<f32>> {
    examples
        .iter()
        .flat_map(|ex| {
            chosen_windows(ex, samples, crops_per_file)
                .into_iter()
                .map(|c| window(&ex.mix, samples, c))
        })
        .collect()
}

/// The windows of `samples` to take from an example, in time order: all of them when
/// there are at most `crops_per_file`, else the `crops_per_file` where the references (or,
/// without references, the mixture) carry the most energy. Utterances begin and end in
/// silence, and an SI-SDR on a silent reference measures nothing.
fn chosen_windows(ex: &dataset::Example, samples: usize, crops_per_file: usize) -> Vec<usize> {
    let n = ex.mix.len().div_ceil(samples).max(1);
    let k = crops_per_file.max(1);
    if n <= k {
        return (0..n).collect();
    }
    let energy = |c: usize| -> f64 {
        let range = c * samples..((c + 1) * samples).min(ex.mix.len());
        let sq = |x: &[f32]| {
            x[range.clone()]
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
        };
        match ex.sources.is_empty() {
            true => sq(&ex.mix),
            false => ex.sources.iter().map(|s| sq(s)).sum(),
        }
    };
    let mut by_energy: Vec<(usize, f64)> = (0..n).map(|c| (c, energy(c))).collect();
    by_energy.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = by_energy.into_iter().take(k).map(|(c, _)| c).collect();
    chosen.sort_unstable();
    chosen
}

/// Window `c` of `samples` samples of `x`, zero-padded when `x` ends first.
fn window(x: &[f32], samples: usize, c: usize) -> Vec<f32> {
    let mut v: Vec<f32> = x.iter().skip(c * samples).take(samples).copied().collect();
    v.resize(samples, 0.0);
    v
}

/// The item a run draws at `step` from `n` items: its place in the seeded order of that
/// step's epoch ([`epoch_order`]), so a run resumes from its step count alone.
pub fn item_at(n: usize, seed: u64, step: usize) -> usize {
    epoch_order(n, seed, step / n)[step % n]
}

/// A seeded order over `n` items for epoch `epoch` (re-drawn every epoch, so a run can
/// resume from its step count alone).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut super::gumbel::rng_at(seed ^ 0xA5A5, epoch));
    order
}
