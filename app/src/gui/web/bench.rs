//! `?bench=train` and `?bench=decode`: `cinder bench`'s measurements inside the page, their
//! lines and result written to the console.

use super::{fetch_model, log, warn};

/// The measurements `?bench=...` runs in the page, as `cinder bench` runs them natively.
#[derive(Clone, Copy, Debug)]
pub(super) enum Bench {
    /// `cinder bench train --workload tiny`.
    Train,
    /// `cinder bench decode --model smollm2`, one timed run of 32 tokens after a 64-token prompt.
    Decode,
}

/// The address without its `bench` parameter, and the benchmark it asks for.
pub(super) fn take_bench(query: &str) -> (String, Option<Result<Bench, String>>) {
    let mut bench = None;
    let rest: Vec<&str> = query
        .trim_start_matches('?')
        .split('&')
        .filter(|pair| match pair.split_once('=').unwrap_or((pair, "")) {
            ("bench", value) => {
                bench = Some(match value {
                    "train" => Ok(Bench::Train),
                    "decode" => Ok(Bench::Decode),
                    other => Err(format!("?bench={other}: expected train or decode")),
                });
                false
            }
            _ => true,
        })
        .collect();
    (rest.join("&"), bench)
}

/// Runs `bench` on `selected` and writes its lines and result to the console.
pub(super) async fn run_bench(bench: Bench, selected: cinder_engine::device::Selected) {
    let say = &mut |line: String| log(&format!("bench: {line}"));
    let result = match bench {
        Bench::Train => {
            crate::bench::train_async(crate::cli::Workload::Tiny, 30, 3, &selected, say)
                .await
                .map(|tps| format!("train tiny {tps:.1} tokens/s on {}", selected.description))
        }
        Bench::Decode => bench_decode(&selected, say).await,
    };
    match result {
        Ok(line) => log(&format!("bench result: {line}")),
        Err(e) => warn(&format!("bench: {e:#}")),
    }
}

/// The decode benchmark on SmolLM2 from the site: load time, time to the first token, speeds.
async fn bench_decode(
    selected: &cinder_engine::device::Selected,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<String> {
    let t0 = web_time::Instant::now();
    let (name, files) = fetch_model("smollm2").await.map_err(anyhow::Error::msg)?;
    let fetched = t0.elapsed().as_secs_f64();
    let dtype = crate::generate::load_dtype(
        cinder_engine::quant::DtypeChoice::default(),
        selected,
        &mut |note| say(note),
    );
    let loaded = cinder_models::auto::load_bytes(
        std::path::Path::new(&name),
        files,
        &selected.device,
        dtype,
    )?;
    let loaded_in = t0.elapsed().as_secs_f64();
    say(format!(
        "{name}: fetched in {fetched:.1} s, loaded ({:?} weights) in {loaded_in:.1} s",
        loaded.dtype
    ));
    let best = crate::bench::decode_async(&loaded, &selected.device, 64, 32, 1, say).await?;
    Ok(format!(
        "decode smollm2 ({:?}) on {}: load {loaded_in:.1} s, first token after {:.2} s \
         (prefill {:.1} tokens/s), decode {:.1} tokens/s",
        loaded.dtype,
        selected.description,
        best.prefill.as_secs_f64(),
        best.prefill_tokens_per_second(),
        best.decode_tokens_per_second()
    ))
}
