//! http_json: a full-mode HTTP endpoint that answers GET and POST with a JSON description
//! of the request, and any other method with 405.

use tinywasm::http::{json_string, Answer, Request};

fn serve(request: &Request) -> Answer {
    if request.method != "GET" && request.method != "POST" {
        return Answer::text(405, "method not allowed\n").header("allow", "GET, POST");
    }
    Answer::json(format!(
        r#"{{"lang":"rust","method":{},"path":{},"query":{},"body_bytes":{},"agent":{}}}"#,
        json_string(&request.method),
        json_string(&request.path),
        json_string(&request.query),
        request.body.len(),
        json_string(request.header("x-agent").unwrap_or("")),
    ))
}

tinywasm::handle_http!(serve);
