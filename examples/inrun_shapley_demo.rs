//! In-Run Data Shapley on red-wine quality (linfa-datasets) with 10 % flipped labels: train a
//! one-hidden-layer MLP by minibatch SGD, value every training sample at every step with
//! `Context::ghg` (first + second order, MATH.md §2) and accumulate with
//! `Context::accumulate_values`, then rank samples: the flipped ones should have the lowest value.
//!
//! Value sign: ghg returns φ = the sample's share of the CHANGE of the validation loss (negative
//! = helpful); the reported value is −φ (loss reduction), so lowest value = most suspicious.
//!
//! Usage: cargo run --release --example inrun_shapley_demo -- [--seed N] [--epochs E]
//!        [--lr LR] [--batch B] [--val M] [--plot PATH]  (defaults: 20 epochs, lr 1.0, batch 32, M 600)
//! Runs on `Context::cpu()` (the CUDA branch needs device buffers and is not part of this demo;
//! see the report).

#[path = "../tests/common/mlp.rs"]
mod mlp;

use std::io::Write;
use std::time::Instant;

use ghostgrad::{Accumulate, Context, FormRequest, GhgLayer, GhostDotLayer, LayerShape, QueryFactors, Segments, Tensor, TensorMut, TrainFactors};
use mlp::{Factors, Mlp};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn f32v(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

struct F32Factors {
    a1: Vec<f32>,
    b1: Vec<f32>,
    a2: Vec<f32>,
    b2: Vec<f32>,
}
fn to32(f: &Factors) -> F32Factors {
    F32Factors { a1: f32v(&f.a1), b1: f32v(&f.b1), a2: f32v(&f.a2), b2: f32v(&f.b2) }
}

fn tf<'a>(a: &'a [f32], b: &'a [f32], n: u64) -> TrainFactors<'a> {
    TrainFactors { a: Tensor::from(a), b: Tensor::from(b), n, t: 1, mask: None }
}

fn q<'a>(l: &GhgLayer<'a>) -> QueryFactors<'a> {
    QueryFactors { aq: l.a_val, bq: l.b_val, q: l.t_v, segments: Segments::Single, mask: None }
}

fn auc(score: &[f64], positive: &[bool]) -> f64 {
    // P(score of a positive < score of a negative): low value = suspicious.
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &pi) in positive.iter().enumerate() {
        if !pi {
            continue;
        }
        for (j, &pj) in positive.iter().enumerate() {
            if pj {
                continue;
            }
            den += 1.0;
            num += if score[i] < score[j] { 1.0 } else if score[i] == score[j] { 0.5 } else { 0.0 };
        }
    }
    num / den
}

fn main() -> ghostgrad::Result<()> {
    let seed: u64 = arg("--seed", 0);
    let epochs: usize = arg("--epochs", 20);
    let lr: f64 = arg("--lr", 1.0);
    let batch: usize = arg("--batch", 32);
    let n_val: usize = arg("--val", 600);
    let plot: String = arg("--plot", "target/inrun_values.svg".to_string());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    // Data: standardized features, quality >= 6 -> class 1.
    let ds = linfa_datasets::winequality();
    let (n_all, d) = (ds.records.nrows(), ds.records.ncols());
    let mut x: Vec<f64> = (0..n_all).flat_map(|i| (0..d).map(move |j| (i, j))).map(|(i, j)| ds.records[[i, j]]).collect();
    for j in 0..d {
        let m = (0..n_all).map(|i| x[i * d + j]).sum::<f64>() / n_all as f64;
        let s = ((0..n_all).map(|i| (x[i * d + j] - m).powi(2)).sum::<f64>() / n_all as f64).sqrt();
        for i in 0..n_all {
            x[i * d + j] = (x[i * d + j] - m) / s;
        }
    }
    let y_all: Vec<usize> = (0..n_all).map(|i| (ds.targets[i] >= 6) as usize).collect();
    let mut order: Vec<usize> = (0..n_all).collect();
    order.shuffle(&mut rng);
    let (val_idx, train_idx) = order.split_at(n_val);
    let n = train_idx.len();
    let xt: Vec<f64> = train_idx.iter().flat_map(|&i| x[i * d..(i + 1) * d].to_vec()).collect();
    let xv: Vec<f64> = val_idx.iter().flat_map(|&i| x[i * d..(i + 1) * d].to_vec()).collect();
    let yv: Vec<usize> = val_idx.iter().map(|&i| y_all[i]).collect();
    let mut yt: Vec<usize> = train_idx.iter().map(|&i| y_all[i]).collect();
    let mut flipped = vec![false; n];
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    for &i in &perm[..n / 10] {
        flipped[i] = true;
        yt[i] = 1 - yt[i];
    }
    eprintln!("winequality-red: {n} train ({} flipped), {n_val} validation, {d} features", n / 10);

    let h = 16;
    let init = |rng: &mut ChaCha8Rng| {
        let mut m = Mlp { d, h, c: 2, t: 1, w: vec![0.0; h * d + h + 2 * h + 2] };
        for j in 0..h * d {
            m.w[j] = (rng.random::<f64>() * 2.0 - 1.0) / (d as f64).sqrt();
        }
        for j in 0..2 * h {
            m.w[h * d + h + j] = (rng.random::<f64>() * 2.0 - 1.0) / (h as f64).sqrt();
        }
        m
    };
    let model0 = init(&mut rng);
    let val_scale = 1.0 / n_val as f64;

    // Startup check: the JVP of the validation factors against central finite differences.
    {
        let m = &model0;
        let f = m.factors(&m.w, &xt[..batch * d], &yt[..batch], 1.0);
        let v = m.flat_grad(&f, 0..batch);
        let (_, dot) = m.factors_jvp(&m.w, &xv, &yv, val_scale, Some(&v));
        // H v from factors: ḃᵀ a_val + b_valᵀ ȧ (bias: Σ ḃ), vs FD of the validation gradient.
        let fv = m.factors(&m.w, &xv, &yv, val_scale);
        let mut mixed = Factors { a1: fv.a1.clone(), b1: dot.b1.clone(), a2: fv.a2.clone(), b2: dot.b2.clone() };
        let mut hv = m.flat_grad(&mixed, 0..n_val);
        mixed = Factors { a1: dot.a1.clone(), b1: fv.b1.clone(), a2: dot.a2.clone(), b2: fv.b2.clone() };
        let second = m.flat_grad(&mixed, 0..n_val);
        let (o1, o2, o3) = (h * d, h * d + h, h * d + h + 2 * h);
        for (i, s) in second.iter().enumerate() {
            let is_bias = (o1..o2).contains(&i) || i >= o3;
            if !is_bias {
                hv[i] += s;
            }
        }
        let eps = 1e-5;
        let wp: Vec<f64> = m.w.iter().zip(&v).map(|(w, v)| w + eps * v).collect();
        let wm: Vec<f64> = m.w.iter().zip(&v).map(|(w, v)| w - eps * v).collect();
        let gp = m.flat_grad(&m.factors(&wp, &xv, &yv, val_scale), 0..n_val);
        let gm = m.flat_grad(&m.factors(&wm, &xv, &yv, val_scale), 0..n_val);
        let fd: Vec<f64> = gp.iter().zip(&gm).map(|(p, q)| (p - q) / (2.0 * eps)).collect();
        let err = hv.iter().zip(&fd).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let norm = fd.iter().map(|a| a.abs()).fold(0.0, f64::max);
        eprintln!("JVP check: max |H v (factored JVP) - H v (central FD, eps {eps})| = {err:.2e} (max |H v| = {norm:.2e})");
    }

    let ctx = Context::cpu();
    let eta = (lr / batch as f64) as f32; // per-sample loss summed: w' = w - eta Σ_batch ∇ℓ_j
    let train = |attribute: bool, rng: &mut ChaCha8Rng| -> ghostgrad::Result<(Mlp, Vec<f64>, Vec<f64>, f64, f64)> {
        let mut m = model0.clone();
        let mut phi = vec![0.0f64; n];
        let mut phi1 = vec![0.0f64; n];
        let mut attr_secs = 0.0;
        let start = Instant::now();
        let steps_per_epoch = n.div_ceil(batch);
        for epoch in 0..epochs {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(rng);
            for (s, chunk) in idx.chunks(batch).enumerate() {
                let xb: Vec<f64> = chunk.iter().flat_map(|&i| xt[i * d..(i + 1) * d].to_vec()).collect();
                let yb: Vec<usize> = chunk.iter().map(|&i| yt[i]).collect();
                let f = m.factors(&m.w, &xb, &yb, 1.0);
                let gsum = m.flat_grad(&f, 0..chunk.len());
                if attribute {
                    let t0 = Instant::now();
                    let (fv, dv) = m.factors_jvp(&m.w, &xv, &yv, val_scale, Some(&gsum));
                    let (tr, va, dt) = (to32(&f), to32(&fv), to32(&dv));
                    let nb = chunk.len() as u64;
                    let l1 = LayerShape::new(d as u64, h as u64).with_bias(true);
                    let l2 = LayerShape::new(h as u64, 2).with_bias(true);
                    let layers = [
                        GhgLayer { shape: l1, train: tf(&tr.a1, &tr.b1, nb), a_val: Tensor::from(&va.a1[..]), b_val: Tensor::from(&va.b1[..]), a_dot: Tensor::from(&dt.a1[..]), b_dot: Tensor::from(&dt.b1[..]), t_v: n_val as u64, val_mask: None },
                        GhgLayer { shape: l2, train: tf(&tr.a2, &tr.b2, nb), a_val: Tensor::from(&va.a2[..]), b_val: Tensor::from(&va.b2[..]), a_dot: Tensor::from(&dt.a2[..]), b_dot: Tensor::from(&dt.b2[..]), t_v: n_val as u64, val_mask: None },
                    ];
                    let mut out = vec![0.0f32; chunk.len()];
                    ctx.ghg(&layers, eta, &mut TensorMut::from(out.as_mut_slice()), Accumulate::overwrite(), FormRequest::Auto)?;
                    let ids: Vec<i32> = chunk.iter().map(|&i| i as i32).collect();
                    ctx.accumulate_values(&Tensor::from(&out[..]), &Tensor::from(&ids[..]), &mut TensorMut::from(phi.as_mut_slice()))?;
                    // First order alone, for comparison: -eta Σ_l <G_n, g_val>.
                    let gl: Vec<GhostDotLayer<'_>> =
                        layers.iter().map(|l| GhostDotLayer { shape: l.shape, train: l.train, query: q(l), form: FormRequest::Auto }).collect();
                    ctx.ghost_dot_layers(&gl, &mut TensorMut::from(out.as_mut_slice()), Accumulate { scale: -eta, beta: 0.0 })?;
                    ctx.accumulate_values(&Tensor::from(&out[..]), &Tensor::from(&ids[..]), &mut TensorMut::from(phi1.as_mut_slice()))?;
                    attr_secs += t0.elapsed().as_secs_f64();
                }
                for (w, g) in m.w.iter_mut().zip(&gsum) {
                    *w -= eta as f64 * g;
                }
                let done = epoch * steps_per_epoch + s + 1;
                if done % 10 == 0 || done == epochs * steps_per_epoch {
                    let width = 40;
                    let fill = done * width / (epochs * steps_per_epoch);
                    eprint!("\r{} [{}{}] {done}/{} steps", if attribute { "attributed" } else { "plain     " }, "#".repeat(fill), " ".repeat(width - fill), epochs * steps_per_epoch);
                    let _ = std::io::stderr().flush();
                }
            }
        }
        eprintln!();
        Ok((m, phi, phi1, start.elapsed().as_secs_f64(), attr_secs))
    };
    let mut rng_plain = rng.clone();
    let (_, _, _, plain_secs, _) = train(false, &mut rng_plain)?;
    let (model, phi, phi1, attr_total, attr_secs) = train(true, &mut rng)?;

    let acc_of = |xs: &[f64], ys: &[usize]| {
        let ok = ys.iter().enumerate().filter(|(i, &y)| {
            let p = model.factors(&model.w, &xs[i * d..(i + 1) * d], &[0], 1.0).b2;
            // b2 = p - e_0 for label 0: p1 = b2[1].
            (p[1] > 0.5) as usize == y
        });
        ok.count() as f64 / ys.len() as f64
    };
    let value: Vec<f64> = phi.iter().map(|p| -p).collect();
    let value1: Vec<f64> = phi1.iter().map(|p| -p).collect();
    println!("backend: {}", ctx.describe());
    println!("seed {seed}, epochs {epochs}, lr {lr}, batch {batch}, eta (per-sample) {eta:e}, validation {n_val}");
    println!("validation accuracy {:.3}, train accuracy on (noisy) labels {:.3}", acc_of(&xv, &yv), acc_of(&xt, &yt));
    println!("ROC AUC (flipped = lowest value): first order {:.4}, first+second order {:.4}", auc(&value1, &flipped), auc(&value, &flipped));
    let mut rank: Vec<usize> = (0..n).collect();
    rank.sort_by(|&a, &b| value[a].total_cmp(&value[b]));
    println!("lowest 5 (most suspicious):");
    for &i in &rank[..5] {
        println!("  sample {i:4}  value {:+.4e}  first-order {:+.4e}  flipped {}", value[i], value1[i], flipped[i]);
    }
    println!("highest 5:");
    for &i in rank.iter().rev().take(5) {
        println!("  sample {i:4}  value {:+.4e}  first-order {:+.4e}  flipped {}", value[i], value1[i], flipped[i]);
    }
    println!(
        "overhead: {:.2}x wall clock ({attr_total:.2} s attributed vs {plain_secs:.2} s plain; {attr_secs:.2} s in validation JVP + ghg + accumulate + first-order)",
        attr_total / plain_secs
    );

    // Plot: value by sample index, flipped in red.
    let (wd, ht) = (900.0, 400.0);
    let (lo, hi) = value.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{wd}\" height=\"{ht}\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">In-Run Data Shapley value by training sample (red = flipped label)</text>\n");
    for i in 0..n {
        let px = 20.0 + (wd - 40.0) * i as f64 / n as f64;
        let py = ht - 20.0 - (ht - 60.0) * (value[i] - lo) / (hi - lo).max(1e-30);
        let col = if flipped[i] { "red" } else { "steelblue" };
        svg += &format!("<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"2\" fill=\"{col}\"/>\n");
    }
    svg += "</svg>\n";
    if let Some(dir) = std::path::Path::new(&plot).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&plot, svg).expect("write plot");
    println!("plot: {plot}");
    Ok(())
}
