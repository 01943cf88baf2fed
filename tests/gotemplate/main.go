// Renders an Ollama-style TEMPLATE with Go's text/template (what Ollama uses) for tests.
// stdin: {"template": "...", "system": "...", "messages": [{"role": "...", "content": "..."}]}
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("t").Parse(in.Template))
	if err := t.Execute(os.Stdout, in); err != nil {
		panic(err)
	}
}
