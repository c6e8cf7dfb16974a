package console

import (
	"bufio"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // the charsets of the body's parts
	"golang.org/x/net/html"
)

// Limits of the body view.
const (
	maxBodyRead = 16 << 20  // bytes of a message read at most
	maxBodyText = 256 << 10 // characters of text shown at most
	maxParts    = 100       // parts listed at most
)

// bodyView is a message's body as the message page shows it: text only,
// never HTML; what is not text is listed, not shown.
type bodyView struct {
	Text string
	// FromHTML is set when Text was made from an HTML part (no plain
	// text part): its text, without tags, links or images.
	FromHTML  bool
	Truncated bool
	Parts     []partInfo
	Note      string
}

type partInfo struct {
	Type, Name string
	Size       int64
}

// readBody reads the message r and returns its text view.
func readBody(r io.Reader) bodyView {
	var v bodyView
	e, err := message.Read(bufio.NewReader(io.LimitReader(r, maxBodyRead)))
	if e == nil {
		v.Note = "The message cannot be parsed: " + err.Error()
		return v
	}
	var plain, htm string
	var plainCut, htmCut bool
	walkErr := e.Walk(func(path []int, part *message.Entity, err error) error {
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return err
		}
		ct, params, _ := part.Header.ContentType()
		if ct == "" {
			ct = "text/plain"
		}
		if strings.HasPrefix(ct, "multipart/") {
			return nil
		}
		disp, dparams, _ := part.Header.ContentDisposition()
		name := dparams["filename"]
		if name == "" {
			name = params["name"]
		}
		attached := disp == "attachment" || name != ""
		switch {
		case ct == "text/plain" && !attached && plain == "" && err == nil:
			plain, plainCut = readText(part.Body)
			return nil
		case ct == "text/html" && !attached && htm == "" && err == nil:
			htm, htmCut = readText(part.Body)
			return nil
		}
		n, _ := io.Copy(io.Discard, part.Body)
		if len(v.Parts) < maxParts {
			v.Parts = append(v.Parts, partInfo{Type: ct, Name: name, Size: n})
		}
		return nil
	})
	switch {
	case plain != "":
		v.Text, v.Truncated = plain, plainCut
	case htm != "":
		v.Text, v.Truncated, v.FromHTML = htmlText(htm), htmCut, true
	}
	v.Text = cleanText(v.Text)
	if walkErr != nil {
		v.Note = "Part of the message cannot be read: " + walkErr.Error()
	}
	return v
}

// readText reads a text part, up to maxBodyText.
func readText(r io.Reader) (string, bool) {
	b, _ := io.ReadAll(io.LimitReader(r, maxBodyText+1))
	if len(b) > maxBodyText {
		return string(b[:maxBodyText]), true
	}
	return string(b), false
}

// cleanText makes s valid UTF-8 text without control characters but
// newlines and tabs, and without the characters that reorder text
// (bidirectional overrides), which could disguise what is shown.
func cleanText(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\r\n", "\n"), "\uFFFD")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\t':
			return r
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			return -1
		case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
			return -1
		case r == utf8.RuneError:
			return r
		}
		return r
	}, s)
}

// htmlText returns the text of an HTML document: the text between the
// tags, with line breaks for block elements; scripts, styles and every
// attribute (links, images) left out.
func htmlText(s string) string {
	z := html.NewTokenizer(strings.NewReader(s))
	var b strings.Builder
	skip := 0
	for {
		switch z.Next() {
		case html.ErrorToken:
			return strings.TrimSpace(collapseBlank(b.String()))
		case html.TextToken:
			if skip == 0 {
				b.WriteString(strings.Join(strings.Fields(string(z.Text())), " "))
				b.WriteByte(' ')
			}
		case html.StartTagToken, html.SelfClosingTagToken, html.EndTagToken:
			name, _ := z.TagName()
			tag := string(name)
			tt := z.Token().Type
			switch tag {
			case "script", "style", "head", "title":
				if tt == html.StartTagToken {
					skip++
				} else if tt == html.EndTagToken && skip > 0 {
					skip--
				}
			case "br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote":
				b.WriteByte('\n')
			}
		}
	}
}

// collapseBlank trims the spaces around line breaks and keeps at most one
// empty line.
func collapseBlank(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	blank := 0
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" {
			blank++
			if blank > 1 {
				continue
			}
		} else {
			blank = 0
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
