//! `hello`: the smallest useful fnhost job.
//!
//! - `GET /hello?name=Ada` or `GET /hello/Ada` → `{"message": "Hello, Ada!"}`
//! - `POST /hello` with any JSON → `{"echo": <that JSON>}`
//! - `fnhost invoke hello --data '{"name": "Ada"}'` → a greeting for Ada.
//!
//! The greeting word comes from `[config] greeting` in `fnhost.toml`.

use fnhost_sdk::{Event, Output, Result, job};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize)]
struct Greeting {
    message: String,
}

#[derive(Deserialize)]
struct Who {
    name: String,
}

fn greet(who: &str) -> Result<Output> {
    let word = fnhost_sdk::config("greeting").unwrap_or_else(|| "Hello".into());
    Output::json(&Greeting {
        message: format!("{word}, {who}!"),
    })
}

#[job]
fn hello(event: Event) -> Result<Output> {
    match &event {
        Event::Http(req) if req.method == "POST" => {
            let body: Value = req.json()?;
            Output::json(&serde_json::json!({ "echo": body }))
        }
        Event::Http(req) => {
            let who = req
                .param("name")
                .map(str::to_string)
                .or_else(|| req.query_param("name"))
                .unwrap_or_else(|| "world".into());
            greet(&who)
        }
        Event::Invoke(data) if data.is_empty() => greet("world"),
        Event::Invoke(_) => greet(&event.json::<Who>()?.name),
        other => greet(other.kind()),
    }
}
