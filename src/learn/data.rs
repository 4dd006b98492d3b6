//! Training crops for the learner and fine-tuning: fixed-length windows of a LibriMix-style
//! directory's mixtures, with the references or a teacher model's outputs as targets.
use super::gumbel::Item;
use crate::audio::dataset;
use crate::error::{Error, Result};
use crate::onnx::ModelProto;
use std::path::Path;
use std::sync::Arc;

/// The original model as a teacher for label-free learning: its outputs on a crop are the
/// targets. The learners reach a runtime only through this trait; `runtime::tract`
/// implements it (`TractTeacher`), so nothing in `learn/` depends on a runtime.
pub trait Teacher: Send + Sync {
    /// The teacher's ONNX model (hints compare its activations with the student's).
    fn model(&self) -> &ModelProto;
    /// The model's float outputs on `x` fed as `[1, 1, x.len()]`, flattened and
    /// concatenated in output order: `[S * x.len()]` for a separator with S sources.
    ///
    /// Errors: a model the runtime cannot run at this length.
    fn run(&self, x: &[f32]) -> Result<Vec<f32>>;
}

/// A [`Teacher`] shared by the learners and data sources that use it.
pub type SharedTeacher = Arc<dyn Teacher>;

impl std::fmt::Debug for dyn Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.model().graph.as_ref().map(|g| g.name()).unwrap_or("");
        write!(f, "Teacher({name:?})")
    }
}

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
    teacher: Option<&dyn Teacher>,
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
    teacher: Option<&dyn Teacher>,
) -> Result<Vec<Vec<Item>>> {
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

/// A crop `[samples]` and its speaker's label.
pub type SpeakerCrop = (Vec<f32>, usize);

/// Speech crops labelled by speaker, for in-situ speaker-verification training: up to
/// `crops_per_file` of the most energetic windows `[samples]` of every audio file under
/// `data` (16 kHz), each with its speaker's label, and the speakers (label order: sorted
/// names). A file's speaker is its first folder under `data`, or for files directly in
/// `data` the prefix of its name before `-` or `_` (LibriSpeech's `SPEAKER-CHAPTER-UTT`).
///
/// Errors: unreadable data; fewer than 2 speakers.
pub fn speaker_crops(
    data: &Path,
    samples: usize,
    crops_per_file: usize,
) -> Result<(Vec<SpeakerCrop>, Vec<String>)> {
    use crate::audio::corpus::{audio_files, speaker_of};
    let files = audio_files(data)?;
    let mut speakers: Vec<String> = files.iter().map(|f| speaker_of(data, f)).collect();
    speakers.sort_unstable();
    speakers.dedup();
    if speakers.len() < 2 {
        return Err(Error::Data(format!(
            "{}: speaker training needs at least 2 speakers (folders, or LibriSpeech names), found {}",
            data.display(),
            speakers.len()
        )));
    }
    let mut crops = vec![];
    for f in &files {
        let label = speakers
            .binary_search(&speaker_of(data, f))
            .map_err(|_| Error::Data(format!("{}: speaker not listed", f.display())))?;
        let ex = dataset::Example {
            name: f.display().to_string(),
            mix: crate::audio::wav::read_at(f, 16000)?,
            sources: vec![],
        };
        for c in chosen_windows(&ex, samples, crops_per_file) {
            crops.push((window(&ex.mix, samples, c), label));
        }
    }
    Ok((crops, speakers))
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
