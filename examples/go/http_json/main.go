// http_json: a full-mode HTTP endpoint that answers GET and POST with a JSON description
// of the request, and any other method with 405.
package main

import (
	"encoding/json"

	"tinywasm/tinywasm"
)

type description struct {
	Lang      string `json:"lang"`
	Method    string `json:"method"`
	Path      string `json:"path"`
	Query     string `json:"query"`
	BodyBytes int    `json:"body_bytes"`
	Agent     string `json:"agent"`
}

func init() {
	tinywasm.HandleHTTP(func(r *tinywasm.Request) tinywasm.Answer {
		if r.Method != "GET" && r.Method != "POST" {
			answer := tinywasm.TextResponse(405, "method not allowed\n")
			answer.Header.Add("allow", "GET, POST")
			return answer
		}
		body, err := json.Marshal(description{
			"go", r.Method, r.Path, r.Query, len(r.Body), r.Header["x-agent"],
		})
		if err != nil {
			return tinywasm.TextResponse(500, err.Error())
		}
		return tinywasm.JSON(body)
	})
}

func main() {}
