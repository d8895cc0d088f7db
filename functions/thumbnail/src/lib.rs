//! `thumbnail`: a real CPU-bound job.
//!
//! - Bound to bucket changes: an image uploaded to `uploads` gets a PNG
//!   thumbnail under the same key in `thumbnails` (the `output_bucket`
//!   config); deleting the upload deletes its thumbnail.
//! - `POST /thumbnail?width=W&height=H` with a PNG or JPEG body answers a PNG
//!   that fits in W×H, keeping the aspect ratio (defaults from `[config]`).
//!   Headers `x-original-size` and `x-thumbnail-size` give both sizes as `WxH`.
//!
//! Something that is not an image is a permanent failure (`fail`), so a blob
//! change or queue message for it is dead-lettered rather than retried; a
//! storage outage is transient (`retry`).

use fnhost_sdk::{BlobChange, ChangeKind, Error, Event, Output, Result, ResultExt, job, storage};
use image::{ImageFormat, ImageReader};
use std::io::Cursor;

/// The largest box a caller may ask for.
const MAX_SIDE: u32 = 4096;

fn dimension(asked: Option<String>, config_key: &str) -> Result<u32> {
    let text = asked
        .or_else(|| fnhost_sdk::config(config_key))
        .unwrap_or_else(|| "128".into());
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_SIDE).contains(&n) => Ok(n),
        _ => Err(Error::fail(format!(
            "{config_key} must be a whole number from 1 to {MAX_SIDE}, got {text:?}"
        ))),
    }
}

/// An encoded thumbnail with the original's and its own size.
struct Thumbnail {
    png: Vec<u8>,
    original: (u32, u32),
    size: (u32, u32),
}

/// Decode `bytes`, shrink to fit `width`×`height`, encode as PNG.
fn thumbnail(bytes: &[u8], width: u32, height: u32) -> Result<Thumbnail> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::fail(format!("cannot read the image: {e}")))?;
    if !matches!(reader.format(), Some(ImageFormat::Png | ImageFormat::Jpeg)) {
        return Err(Error::fail("the body is not a PNG or JPEG image"));
    }
    let img = reader
        .decode()
        .map_err(|e| Error::fail(format!("cannot decode the image: {e}")))?;
    let original = (img.width(), img.height());
    let small = if img.width() <= width && img.height() <= height {
        img
    } else {
        img.resize(width, height, image::imageops::FilterType::Triangle)
    };
    let size = (small.width(), small.height());
    let mut out = Vec::new();
    small
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| Error::fail(format!("cannot encode the thumbnail: {e}")))?;
    Ok(Thumbnail {
        png: out,
        original,
        size,
    })
}

/// Make, replace or delete the thumbnail of a changed upload.
fn on_upload(change: &BlobChange) -> Result<Output> {
    let out_bucket = fnhost_sdk::config("output_bucket").unwrap_or_else(|| "thumbnails".into());
    if change.kind == ChangeKind::Deleted {
        let existed =
            storage::delete(&out_bucket, &change.key).or_retry("cannot delete the thumbnail")?;
        return Ok(Output::text(format!(
            "{}/{} deleted; thumbnail {}",
            change.bucket,
            change.key,
            if existed { "deleted" } else { "was absent" }
        )));
    }
    let Some(bytes) =
        storage::get(&change.bucket, &change.key).or_retry("cannot read the upload")?
    else {
        // Deleted since the change: nothing to do (the delete has its own event).
        return Ok(Output::text(format!(
            "{}/{} is gone",
            change.bucket, change.key
        )));
    };
    fnhost_sdk::progress(10, "decoding")?;
    let (width, height) = (
        dimension(None, "max_width")?,
        dimension(None, "max_height")?,
    );
    let t = thumbnail(&bytes, width, height)?;
    storage::put(&out_bucket, &change.key, &t.png, Some("image/png"))
        .or_retry("cannot store the thumbnail")?;
    fnhost_sdk::progress(100, "done")?;
    let ((ow, oh), (tw, th)) = (t.original, t.size);
    Ok(Output::text(format!(
        "{}/{} {ow}x{oh} -> {out_bucket}/{} {tw}x{th}",
        change.bucket, change.key, change.key
    )))
}

#[job]
fn handle(event: Event) -> Result<Output> {
    let (bytes, width, height) = match &event {
        Event::Blob(change) => return on_upload(change),
        Event::Http(req) => (
            req.body.as_slice(),
            dimension(req.query_param("width"), "max_width")?,
            dimension(req.query_param("height"), "max_height")?,
        ),
        Event::Invoke(data) => (
            data.as_slice(),
            dimension(None, "max_width")?,
            dimension(None, "max_height")?,
        ),
        other => {
            return Err(Error::fail(format!(
                "thumbnail does not handle {} events",
                other.kind()
            )));
        }
    };
    if bytes.is_empty() {
        return Err(Error::fail("send the image as the request body"));
    }
    fnhost_sdk::progress(10, "decoding")?;
    let Thumbnail {
        png,
        original: (ow, oh),
        size: (tw, th),
    } = thumbnail(bytes, width, height)?;
    fnhost_sdk::progress(100, "done")?;
    Ok(Output::bytes("image/png", png)
        .with_header("x-original-size", &format!("{ow}x{oh}"))
        .with_header("x-thumbnail-size", &format!("{tw}x{th}")))
}
