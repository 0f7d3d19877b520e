// http_json: a full-mode HTTP endpoint that answers GET and POST with a JSON description
// of the request, and any other method with 405.
import { answer, jsonString, parseRequest, Response } from "tinywasm";
export { malloc, free } from "tinywasm";

export function handle_http(ptr: usize, len: i32): u64 {
  const request = parseRequest(ptr, len);
  if (request == null) return answer(Response.text(400, "unreadable request\n"));
  if (request.method != "GET" && request.method != "POST") {
    return answer(Response.text(405, "method not allowed\n").header("allow", "GET, POST"));
  }
  const agent = request.header("x-agent");
  return answer(
    Response.json(
      '{"lang":"assemblyscript","method":' + jsonString(request.method) +
        ',"path":' + jsonString(request.path) +
        ',"query":' + jsonString(request.query) +
        ',"body_bytes":' + request.body.length.toString() +
        ',"agent":' + jsonString(agent == null ? "" : agent) + "}",
    ),
  );
}
