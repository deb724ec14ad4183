//! `cinder train`: a headless run with a progress bar. The settings come from the engine's and
//! the models' settings structs; the run logic (run folder, metrics, checkpoints, resume) is
//! the engine's [`Run`]; this file only reports.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cinder_engine::data::Corpus;
use cinder_engine::device::Selected;
#[cfg(not(target_family = "wasm"))]
use cinder_engine::run::FsStorage;
#[cfg(target_family = "wasm")]
use cinder_engine::run::MemoryStorage;
use cinder_engine::run::{Run, RunStorage};
use cinder_models::recipe::{AnyTrainer, TrainSettings, prepare};

/// `runs/<corpus>`, or `runs/<corpus>-N` when that exists.
pub fn free_run_dir(settings: &TrainSettings) -> PathBuf {
    let corpus = settings.model.corpus.to_string();
    let stem = Path::new(&corpus)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let base = PathBuf::from("runs").join(&stem);
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|i| PathBuf::from("runs").join(format!("{stem}-{i}")))
        .find(|p| !p.exists())
        .unwrap_or(base)
}

/// Where a run's files go: its folder natively; memory in the browser, which has no files (the
/// page offers checkpoints as downloads).
fn storage(dir: &Path) -> Box<dyn RunStorage> {
    #[cfg(not(target_family = "wasm"))]
    {
        Box::new(FsStorage::new(dir))
    }
    #[cfg(target_family = "wasm")]
    {
        let _ = dir;
        Box::new(MemoryStorage::new())
    }
}

/// Where a run's corpus comes from.
pub enum CorpusFrom<'a> {
    /// Loaded as the settings name it, fetching into this cache folder when needed.
    Cache(&'a Path),
    /// Already in memory (in the browser: fetched by the page or dropped on it).
    Given(Corpus),
}

/// A run ready to step.
pub struct Session {
    /// The trainer, restored when the run resumes.
    pub trainer: AnyTrainer,
    /// The run's files.
    pub run: Run,
    /// The run folder.
    pub run_dir: PathBuf,
    /// The settings in force (a resumed run's saved settings).
    pub settings: TrainSettings,
}

/// Opens the run a `cinder train` invocation names: a new one from `settings` in `out` (or a
/// free folder), or the run in `resume`, continued with its saved settings (only `steps`, when
/// given, and the device change).
pub fn open_session(
    settings: TrainSettings,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    steps: Option<u64>,
    corpus: CorpusFrom<'_>,
    selected: &Selected,
    say: &mut dyn FnMut(String),
) -> Result<Session> {
    let (settings, run_dir, resuming) = match resume {
        Some(dir) => {
            let run = Run::open(storage(&dir));
            let saved = TrainSettings::resumed(&run, steps, settings.device)
                .with_context(|| format!("--resume {}", dir.display()))?;
            (saved, dir, true)
        }
        None => {
            let dir = out.unwrap_or_else(|| free_run_dir(&settings));
            (settings, dir, false)
        }
    };
    let mut run = Run::new(storage(&run_dir))?;
    let corpus = match corpus {
        CorpusFrom::Given(corpus) => corpus,
        CorpusFrom::Cache(dir) => Corpus::load(&settings.model.corpus, dir)?,
    };
    let trainer = prepare(&settings, &mut run, resuming, selected, corpus, say)
        .with_context(|| format!("run {}", run_dir.display()))?;
    say(format!("run folder: {}", run_dir.display()));
    Ok(Session {
        trainer,
        run,
        run_dir,
        settings,
    })
}

/// `cinder train`.
#[cfg(not(target_family = "wasm"))]
pub fn run(args: crate::cli::TrainArgs, cache_dir: &Path) -> Result<()> {
    use cinder_engine::device::select;
    let settings = args.settings()?;
    let selected = select(settings.device)?;
    let steps = args.steps_given.then_some(args.train.steps);
    let Session {
        mut trainer,
        mut run,
        run_dir,
        settings,
    } = open_session(
        settings,
        args.out.clone(),
        args.resume.clone(),
        steps,
        CorpusFrom::Cache(cache_dir),
        &selected,
        &mut |line| eprintln!("{line}"),
    )?;

    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    let total = trainer.config().steps;
    let interactive = std::io::stderr().is_terminal() && !args.quiet;
    let bar = if interactive {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_position(trainer.step_count());
    let log_every = (total / 20).max(1);
    let mut smoothed_tps: Option<f64> = None;
    let mut steps_this_run = 0u64;
    let mut saved_at = None;
    let started = web_time::Instant::now();
    while !trainer.finished() {
        if args.stop_after.is_some_and(|n| steps_this_run >= n) {
            break;
        }
        let r = trainer.step_in(&mut run)?;
        steps_this_run += 1;
        let tps = smoothed_tps.map_or(r.tokens_per_sec, |s| 0.9 * s + 0.1 * r.tokens_per_sec);
        smoothed_tps = Some(tps);
        let parts = match (r.reconstruction, r.kl, r.kl_weight) {
            (Some(recon), Some(kl), Some(w)) => format!(" (recon {recon:.2} KL {kl:.2} x{w:.2})"),
            _ => String::new(),
        };
        let msg = format!(
            "loss {:.4}{parts} lr {:.2e} |g| {:.2} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, tps
        );
        bar.set_position(r.step);
        bar.set_message(msg.clone());
        let say = |line: String| {
            if interactive {
                bar.println(line)
            } else {
                eprintln!("{line}")
            }
        };
        if !interactive && (r.step % log_every == 0 || r.step == 1) {
            say(format!("step {}/{total} {msg}", r.step));
        }
        if let Some(note) = &r.note {
            say(format!("step {}: {note}", r.step));
        }
        if let (Some(eval), Some(recon), Some(kl)) = (r.eval_loss, r.eval_reconstruction, r.eval_kl)
        {
            say(format!(
                "step {}: held-out loss {eval:.3} (reconstruction {recon:.3}, KL {kl:.3})",
                r.step
            ));
        } else if let Some(eval) = r.eval_loss {
            say(format!(
                "step {}: held-out loss {eval:.4} (perplexity {:.1})",
                r.step,
                eval.exp()
            ));
        }
        if let Some(sample) = &r.sample {
            say(format!(
                "step {} sample:\n  {}",
                r.step,
                sample.trim().replace('\n', "\n  ")
            ));
        }
        if let Some(ckpt) = r.checkpoint {
            saved_at = Some((r.step, ckpt));
        }
    }
    bar.finish_and_clear();
    if steps_this_run > 0
        && saved_at
            .as_ref()
            .is_none_or(|(s, _)| *s != trainer.step_count())
    {
        saved_at = Some((trainer.step_count(), trainer.save_in(&mut run)?));
    }
    if let Some((_, ckpt)) = &saved_at {
        eprintln!("checkpoint: {}", ckpt.display());
    }
    if !trainer.finished() {
        eprintln!(
            "stopped at step {} of {total}; continue with: cinder train --resume {}",
            trainer.step_count(),
            run_dir.display()
        );
        return Ok(());
    }
    // The end of the run in one line: how long it took and where the held-out loss ended,
    // over every held-out window where the objective allows it.
    let (final_eval, windows) = trainer.evaluate_all()?;
    let over = match windows {
        0 => String::new(),
        n => format!(" over all {n} held-out windows"),
    };
    let wall = started.elapsed().as_secs_f64().round() as u64;
    eprintln!(
        "trained {steps_this_run} steps in {}m{:02}s; final held-out loss {final_eval:.4} \
         (perplexity {:.1}){over}",
        wall / 60,
        wall % 60,
        final_eval.exp()
    );
    use cinder_engine::lm::Objective;
    let objective = trainer.objective();
    let masked = objective == Objective::Masked;
    if masked {
        println!("\nFilling in masked held-out lines with the trained model:");
    } else if objective == Objective::Seq2Seq {
        println!("\nAnswering held-out inputs with the trained model (the reference in brackets):");
    } else if objective == Objective::Variational {
        println!("\nCouplets from random noise:");
    } else {
        println!("\nGenerating from the trained model:");
    }
    for i in 0..3 {
        let text = trainer.sample(settings.train.seed.wrapping_add(1000 + i))?;
        println!("{}", text.trim());
    }
    if objective == Objective::Variational {
        println!(
            "\nTry: cinder poem --model {0} --count 20\n     cinder poem --model {0} \
             --interpolate --count 8",
            run_dir.display()
        );
    } else if masked {
        println!(
            "\nTry: cinder fill-mask --model {0} \"... [MASK] ...\"\n     cinder embed --model {0} \
             \"first text\" \"second text\"",
            run_dir.display()
        );
    } else {
        println!(
            "\nTry: cinder generate --model {} --prompt \"...\" --max-new-tokens 64",
            run_dir.display()
        );
    }
    Ok(())
}
