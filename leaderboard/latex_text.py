"""Plain text (labels, suite names, fixed text) as pdflatex-safe LaTeX: only ASCII comes out.

LaTeX special characters are escaped; every non-ASCII character is mapped to LaTeX (Greek letters,
±, ×, arrows, dashes, quotes, accented letters, ...) or dropped, so ``leaderboard.tex`` compiles with
plain ``pdflatex`` and ``\\usepackage{booktabs,graphicx}`` whatever the labels hold. Private-use
characters (placeholders of the renderer) pass through unchanged.
"""

from __future__ import annotations

import unicodedata

LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}", "\n": " ", "\r": " ", "\t": " ",
}

_GREEK = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
          "finalsigma sigma tau upsilon phi chi psi omega").split()
_UPPER_MACRO = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"}
_UPPER_LATIN = dict(zip(("Alpha Beta Epsilon Zeta Eta Iota Kappa Mu Nu Omicron Rho Tau Chi").split(),
                        "A B E Z H I K M N O P T X".split(), strict=True))


def _greek() -> dict[str, str]:
    out: dict[str, str] = {}
    for k, name in enumerate(_GREEK):
        lower = chr(0x3B1 + k)
        macro = {"finalsigma": "varsigma", "omicron": ""}.get(name, name)
        out[lower] = rf"$\{macro}$" if macro else "o"
        if name == "finalsigma":
            continue
        upper = chr(0x391 + k)
        cap = name.capitalize()
        out[upper] = rf"$\{cap}$" if cap in _UPPER_MACRO else _UPPER_LATIN.get(cap, cap[0])
    out["ϵ"], out["ϑ"], out["ϕ"], out["µ"] = r"$\epsilon$", r"$\vartheta$", r"$\phi$", r"$\mu$"
    return out


UNICODE_TO_LATEX = {
    **_greek(),
    "±": r"$\pm$", "×": r"$\times$", "÷": r"$\div$", "·": r"$\cdot$", "−": "-", "≤": r"$\leq$", "≥": r"$\geq$",
    "≠": r"$\neq$", "≈": r"$\approx$", "∞": r"$\infty$", "√": r"$\surd$", "∑": r"$\sum$", "∆": r"$\Delta$",
    "→": r"$\rightarrow$", "←": r"$\leftarrow$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "↔": r"$\leftrightarrow$",
    "⇒": r"$\Rightarrow$", "—": "---", "–": "--", "‐": "-", "‑": "-", "…": r"\ldots{}", "‘": "`", "’": "'",
    "“": "``", "”": "''", "„": ",,", "«": "<<", "»": ">>", "°": r"$^\circ$", "†": r"\textdagger{}",
    "‡": r"\textdaggerdbl{}", "•": r"\textbullet{}", "§": r"\S{}", "¶": r"\P{}", "©": r"\copyright{}",
    "€": "EUR", "£": r"\pounds{}", "²": r"$^2$", "³": r"$^3$", "¹": r"$^1$", "½": "1/2", "ß": r"\ss{}",
    "æ": r"\ae{}", "Æ": r"\AE{}", "ø": r"\o{}", "Ø": r"\O{}", "œ": r"\oe{}", "Œ": r"\OE{}", "å": r"\aa{}",
    "Å": r"\AA{}", "ł": r"\l{}", "Ł": r"\L{}", "ı": r"\i{}", "\u00a0": "~", "\u2009": r"\,", "\u202f": r"\,",
    "✓": "yes", "✗": "no", "⚠": "",
}
"""Non-ASCII characters with a LaTeX form (an accented letter not listed is composed from its parts)."""

_ACCENTS = {"\u0301": "'", "\u0300": "`", "\u0302": "^", "\u0308": '"', "\u0303": "~", "\u0304": "=",
            "\u0307": ".", "\u0327": "c", "\u030c": "v", "\u0306": "u", "\u030b": "H", "\u0328": "k",
            "\u030a": "r"}


def _char(ch: str) -> str:
    """One character as LaTeX ("" for a character with no LaTeX form)."""
    if ch in LATEX_ESCAPES:
        return LATEX_ESCAPES[ch]
    if ord(ch) < 128:
        return ch if ch.isprintable() else ""
    if ch in UNICODE_TO_LATEX:
        return UNICODE_TO_LATEX[ch]
    if unicodedata.category(ch) == "Co":
        return ch  # a renderer's placeholder, replaced after escaping
    parts = unicodedata.normalize("NFD", ch)
    if len(parts) >= 2 and ord(parts[0]) < 128 and parts[0].isalpha():
        out = parts[0] if parts[0] not in "ij" else "\\" + parts[0]
        for mark in parts[1:]:
            if mark not in _ACCENTS:
                return parts[0]
            out = f"\\{_ACCENTS[mark]}{{{out}}}"
        return out
    compat = unicodedata.normalize("NFKD", ch)
    if compat != ch and all(ord(c) < 128 for c in compat):
        return "".join(_char(c) for c in compat)
    return ""


def tex_text(text: object) -> str:
    """Plain text as pdflatex-safe LaTeX: specials escaped, non-ASCII mapped or dropped, line breaks as spaces."""
    return "".join(_char(ch) for ch in str(text))
