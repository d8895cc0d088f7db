//! The HTTP trigger as a caller sees it: outputs become responses, limits
//! become status codes, and the CPU-bound example does real work.

use fnhost_tests::{Host, guests, png_size, repo_root};

#[test]
fn request_bodies_over_the_limit_get_413() {
    let g = guests();
    let host = Host::start_with(&["--max-body-bytes", "1024"]);
    host.deploy_ok(
        "name = \"hello\"\n[[triggers.http]]\npath = \"/hello\"\n",
        &g.hello,
    );
    let r = host.post("/hello", vec![b' '; 2048]);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "body_too_large");
    let r = host.post("/hello", r#"{"small": true}"#);
    assert_eq!(r.status, 200);
}

#[test]
fn methods_and_unknown_routes() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        "name = \"hello\"\n[[triggers.http]]\npath = \"/hello/{name}\"\nmethods = [\"GET\"]\n",
        &g.hello,
    );
    assert_eq!(host.get("/hello/Bo").json()["message"], "Hello, Bo!");
    let r = host.request("PUT", "/hello/Bo", Vec::new(), None);
    assert_eq!(r.status, 405);
    let r = host.get("/nothing/here");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "no_route");
}

#[test]
fn thumbnail_shrinks_a_png_and_refuses_garbage() {
    let g = guests();
    let host = Host::start();
    host.deploy_ok(
        &std::fs::read_to_string(repo_root().join("functions/thumbnail/fnhost.toml")).unwrap(),
        &g.thumbnail,
    );
    let image = std::fs::read(repo_root().join("tests/fixtures/landscape-300x200.png")).unwrap();
    assert_eq!(png_size(&image), (300, 200));
    let r = host.post("/thumbnail?width=120&height=120", image.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(png_size(&r.body), (120, 80));
    assert_eq!(r.header("x-original-size").as_deref(), Some("300x200"));
    assert_eq!(r.header("x-thumbnail-size").as_deref(), Some("120x80"));

    // Defaults from the manifest's config: a 128×128 box.
    assert_eq!(png_size(&host.post("/thumbnail", image).body), (128, 85));

    let r = host.post("/thumbnail", "definitely not an image");
    assert_eq!(r.status, 500);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a PNG or JPEG"),
        "{}",
        r.text()
    );
}
