//! Training crops for the learner and fine-tuning: fixed-length windows of a LibriMix-style
//! directory's mixtures, with the references or a teacher model's outputs as targets.
use super::gumbel::Item;
use crate::audio::dataset;
use crate::error::{Error, Result};
use crate::onnx::ModelProto;
use crate::runtime::tract::TractModel;
use std::path::Path;

/// Crops of every mixture of `data`, grouped by file (sorted by name): up to
/// `crops_per_file` non-overlapping windows of `samples` samples (zero-padded when short).
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
    let examples = dataset::load(data, 16000)?;
    let teacher = teacher
        .map(|m| TractModel::new(m, &[1, 1, samples]))
        .transpose()?;
    let crop = |x: &[f32], start: usize| -> Vec<f32> {
        let mut v: Vec<f32> = x.iter().skip(start).take(samples).copied().collect();
        v.resize(samples, 0.0);
        v
    };
    let mut out = vec![];
    for ex in &examples {
        let n = ex
            .mix
            .len()
            .div_ceil(samples)
            .clamp(1, crops_per_file.max(1));
        let mut file = vec![];
        for c in 0..n {
            let input = crop(&ex.mix, c * samples);
            let targets = match &teacher {
                Some(t) => t.run(&input)?.chunks(samples).map(<[f32]>::to_vec).collect(),
                None if ex.sources.is_empty() => {
                    return Err(Error::Audio {
                        path: data.join("mix").join(&ex.name),
                        msg: "no references (s1/, ...): use --teacher to learn from the original model's outputs".into(),
                    })
                }
                None => ex.sources.iter().map(|s| crop(s, c * samples)).collect(),
            };
            file.push(Item { input, targets });
        }
        out.push(file);
    }
    Ok(out)
}

/// A seeded order over `n` items for epoch `epoch` (re-drawn every epoch, so a run can
/// resume from its step count alone).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut super::gumbel::rng_at(seed ^ 0xA5A5, epoch));
    order
}
