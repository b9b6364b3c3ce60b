"""A blind human evaluation of generated captions, as LAION-COCO judged theirs.

Raters see one image with one caption at a time, drawn blindly from the machine captions (`top_caption`) and
the human ones (the alt-text) of a finished output; they rate it 0-5 and guess who wrote it. `serve` runs the
rating pages, `invite` gives raters their links (an unguessable token each: only their answers count),
`report` prints the blog's table: mean rating per kind and per guess, and the share of machine captions taken
for human.

The pages are served with `aiohttp.web`, already the fetch stage's dependency: Gradio would add a large
dependency tree and a frontend for what is a two-field form. Answers go to SQLite, committed before the
reply, so a killed server loses nothing a rater saw acknowledged.
"""
