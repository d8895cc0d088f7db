//! The benchmark's peer for `wasmtime serve`: a `wasi:http` component that
//! answers like `functions/hello` does (`{"message":"Hello, <name>!"}` from
//! `?name=`), so both hosts do comparable work per request.

use std::io::Write as _;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let name = path
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
            .unwrap_or("world")
            .to_string();
        let headers =
            Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())])
                .unwrap();
        let response = OutgoingResponse::new(headers);
        let body = response.body().unwrap();
        ResponseOutparam::set(out, Ok(response));
        let mut stream = body.write().unwrap();
        stream
            .write_all(format!("{{\"message\":\"Hello, {name}!\"}}").as_bytes())
            .unwrap();
        stream.flush().unwrap();
        drop(stream);
        OutgoingBody::finish(body, None).unwrap();
    }
}
