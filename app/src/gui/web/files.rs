//! Files in the page: what it fetches from the site (with the progress bar) and what the user
//! hands over (dropped on the page or picked with the browser's file chooser).

use std::rc::Rc;

use cinder_engine::data::{Corpus, CorpusSource};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::{Download, MODELS, NamedFiles, PAGE, Shared, js_error, log};

/// Files the user handed to the page (dropped on it or picked), read: a text file (.txt,
/// .text, .md) becomes the training corpus; a .gguf file, or a model folder's files handed over
/// together, the chat view's model.
pub(super) fn accept_files(page: &Shared, files: NamedFiles) {
    let mut model = Vec::new();
    for (name, bytes) in files {
        let path = std::path::PathBuf::from(&name);
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            // A .jsonl file holds (input, target) pairs for an encoder-decoder.
            Some("txt" | "text" | "md" | "jsonl") => match Corpus::from_text(&path, bytes) {
                Ok(corpus) => {
                    log(&format!(
                        "corpus {name}: {} characters for training, {} held out",
                        corpus.train.chars().count(),
                        corpus.val.chars().count()
                    ));
                    let mut page = page.borrow_mut();
                    page.corpora.push((CorpusSource::File(path), corpus));
                    page.chosen = true;
                }
                Err(e) => page.borrow_mut().problem(e.to_string()),
            },
            Some("gguf" | "json" | "safetensors" | "jinja") => model.push((name, bytes)),
            _ => page.borrow_mut().problem(format!(
                "{name}: not a text file to train on (.txt, .text, .md, or .jsonl pairs) nor a \
                 model (.gguf, or a folder's config.json, tokenizer.json, model.safetensors)"
            )),
        }
    }
    if !model.is_empty() {
        let name = model
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        page.borrow_mut().models.push((name, model));
    }
    page.borrow().repaint();
}

/// Opens the browser's file chooser for files of the types in `accept` (e.g. ".txt,.md");
/// the chosen files are read and handed over as dropped files are ([`accept_files`]).
pub(crate) fn choose_files(accept: &str) {
    if let Err(e) = open_chooser(accept) {
        PAGE.with(|page| page.borrow_mut().problem(format!("the file chooser: {e}")));
    }
}

fn open_chooser(accept: &str) -> Result<(), String> {
    let input: web_sys::HtmlInputElement = new_element("input")?;
    input.set_type("file");
    input.set_accept(accept);
    input.set_multiple(true);
    let chosen = input.clone();
    let on_change = Closure::once(move || {
        let Some(list) = chosen.files() else {
            return;
        };
        let picked: Vec<web_sys::File> = (0..list.length()).filter_map(|i| list.get(i)).collect();
        wasm_bindgen_futures::spawn_local(async move {
            let page = PAGE.with(Rc::clone);
            let mut files = Vec::new();
            for file in picked {
                let name = file.name();
                match JsFuture::from(file.array_buffer()).await {
                    Ok(buffer) => files.push((name, js_sys::Uint8Array::new(&buffer).to_vec())),
                    Err(e) => page
                        .borrow_mut()
                        .problem(format!("{name}: {}", js_error(e))),
                }
            }
            accept_files(&page, files);
        });
    });
    input.set_onchange(Some(on_change.as_ref().unchecked_ref()));
    // The input and its handler live until the user chooses (the page keeps no reference).
    on_change.forget();
    input.click();
    Ok(())
}

/// A new element `tag` of the page's document, as the type `T` it is.
pub(crate) fn new_element<T: JsCast>(tag: &str) -> Result<T, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?
        .create_element(tag)
        .map_err(js_error)?
        .dyn_into()
        .map_err(|_| format!("<{tag}> is not the element expected"))
}

/// Fetches `url` from the site, reporting bytes as they arrive.
pub(super) async fn fetch(page: &Shared, url: &str) -> Result<Vec<u8>, String> {
    fetch_if_present(page, url)
        .await?
        .ok_or_else(|| format!("{url}: not found on the site (HTTP 404)"))
}

/// [`fetch`], with `None` for a file the site does not have.
async fn fetch_if_present(page: &Shared, url: &str) -> Result<Option<Vec<u8>>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(js_error)?
        .dyn_into()
        .map_err(js_error)?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let body = response.body().ok_or_else(|| format!("{url}: no body"))?;
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|e| js_error(e.into()))?;
    let index = {
        let mut p = page.borrow_mut();
        p.downloads.push(Download {
            name: url.to_string(),
            received: 0,
            total,
        });
        p.downloads.len() - 1
    };
    let mut out = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(js_error)?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .map_err(js_error)?
            .as_bool()
            .unwrap_or(true);
        if done {
            break;
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(js_error)?;
        out.extend_from_slice(&js_sys::Uint8Array::new(&value).to_vec());
        if let Some(d) = page.borrow_mut().downloads.get_mut(index) {
            d.received = out.len() as u64;
        }
    }
    page.borrow_mut().downloads.retain(|d| d.name != url);
    Ok(Some(out))
}

/// The files of the model a path in the page names, fetched from the site with a progress bar:
/// `smollm2` (the GGUF the site build placed under `data/models/`), a `.gguf` file, or a model
/// folder (`config.json`, `tokenizer.json`, `model.safetensors` and, when present, the chat
/// template files). Returns the name for messages and the files by name.
pub(crate) async fn fetch_model(path: &str) -> Result<(String, NamedFiles), String> {
    let page = PAGE.with(Rc::clone);
    let path = path.trim().trim_end_matches('/');
    let url = if path == "smollm2" {
        format!("{MODELS}/{}", cinder_engine::data::SMOLLM2_FILE)
    } else {
        path.to_string()
    };
    if url.to_ascii_lowercase().ends_with(".gguf") {
        let bytes = fetch_if_present(&page, &url).await?.ok_or_else(|| {
            if path == "smollm2" {
                format!(
                    "{url} is not on this site: build the site after `cinder fetch smollm2` \
                     (scripts/web.sh build does both), or drop a .gguf file on the page"
                )
            } else {
                format!("{url}: not found on the site (HTTP 404)")
            }
        })?;
        let name = url.rsplit('/').next().unwrap_or(&url).to_string();
        return Ok((url.clone(), vec![(name, bytes)]));
    }
    let mut files = Vec::new();
    for name in cinder_engine::run::MODEL_FILES {
        if let Some(bytes) = fetch_if_present(&page, &format!("{url}/{name}")).await? {
            files.push((name.to_string(), bytes));
        }
    }
    if files.is_empty() {
        return Err(format!(
            "{url}: the site has no model there (neither a .gguf file nor a folder with \
             config.json)"
        ));
    }
    Ok((url, files))
}

pub(super) fn gunzip(name: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(out)
}
