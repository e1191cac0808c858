using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace BlockMirror.Qmp.Protocol;

enum QmpJsonTokenType : byte
{
    LeftBrace, RightBrace, LeftBracket, RightBracket, Colon, Comma, Integer, Float, Keyword, String,
}

/// <summary>A token of a message: its type and where its text lies in the message's bytes.</summary>
readonly record struct QmpJsonToken(QmpJsonTokenType Type, int Start, int Length);

/// <summary>
/// Parses one message's tokens with QEMU 7.2's grammar and words (qobject/json-parser.c): the first error
/// wins and is reported as "JSON parse error, ..."; duplicate keys, invalid UTF-8, lone surrogates and
/// noncharacters are refused; integers are 64-bit signed, else unsigned, else a double, as QEMU reads them
/// (and echoes them: a double is written back with 17 significant digits). The value is handed on as a
/// <see cref="JsonDocument"/>, the form the argument readers take.
/// </summary>
static class QmpJsonParser
{
    sealed class ParseError(string message) : Exception(message);

    static readonly JsonWriterOptions WriterOptions = new() { MaxDepth = QmpJsonStreamer.MaxNesting + 1 };
    static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = QmpJsonStreamer.MaxNesting + 1 };

    public static (JsonDocument? Document, string? Error) Parse(ReadOnlySpan<byte> text, List<QmpJsonToken> tokens)
    {
        var output = new ArrayBufferWriter<byte>(Math.Max(256, text.Length));
        try
        {
            using (var writer = new Utf8JsonWriter(output, WriterOptions))
            {
                var parser = new Parser(text, tokens, writer);
                parser.Value();
            }

            return (JsonDocument.Parse(output.WrittenMemory, DocumentOptions), null);
        }
        catch (ParseError e)
        {
            return (null, "JSON parse error, " + Truncate(e.Message));
        }
    }

    /// <summary>QEMU formats a parse error into 1,024 bytes: a longer one (a huge bad keyword) is cut there.</summary>
    static string Truncate(string message)
    {
        const int MaxBytes = 1023;
        if (Encoding.UTF8.GetByteCount(message) <= MaxBytes)
        {
            return message;
        }

        // A character cut in the middle is shown as U+FFFD, as QEMU's output shows it.
        return ModifiedUtf8.Quote(Encoding.UTF8.GetBytes(message).AsSpan(0, MaxBytes));
    }

    ref struct Parser(ReadOnlySpan<byte> text, List<QmpJsonToken> tokens, Utf8JsonWriter writer)
    {
        readonly ReadOnlySpan<byte> _text = text;
        int _next;

        // Output goes nowhere while a non-string key is parsed: it is refused once it has been read.
        Utf8JsonWriter? _writer = writer;

        QmpJsonToken? Peek() => _next < tokens.Count ? tokens[_next] : null;

        QmpJsonToken Pop() => _next < tokens.Count ? tokens[_next++] : throw new ParseError("premature EOI");

        ReadOnlySpan<byte> Text(QmpJsonToken token) => _text.Slice(token.Start, token.Length);

        public void Value()
        {
            var token = Peek() ?? throw new ParseError("premature EOI");
            switch (token.Type)
            {
                case QmpJsonTokenType.LeftBrace:
                    Object();
                    break;
                case QmpJsonTokenType.LeftBracket:
                    Array();
                    break;
                case QmpJsonTokenType.String:
                    _next++;
                    _writer?.WriteStringValue(String(token));
                    break;
                case QmpJsonTokenType.Integer or QmpJsonTokenType.Float:
                    _next++;
                    Number(token);
                    break;
                case QmpJsonTokenType.Keyword:
                    _next++;
                    Keyword(token);
                    break;
                default:
                    throw new ParseError("expecting value");
            }
        }

        void Object()
        {
            Pop();
            _writer?.WriteStartObject();
            var keys = new HashSet<string>(StringComparer.Ordinal);
            if ((Peek() ?? throw new ParseError("premature EOI")).Type == QmpJsonTokenType.RightBrace)
            {
                Pop();
            }
            else
            {
                Pair(keys);
                for (var token = Pop(); token.Type != QmpJsonTokenType.RightBrace; token = Pop())
                {
                    if (token.Type != QmpJsonTokenType.Comma)
                    {
                        throw new ParseError("expected separator in dict");
                    }

                    Pair(keys);
                }
            }

            _writer?.WriteEndObject();
        }

        void Pair(HashSet<string> keys)
        {
            var first = Peek() ?? throw new ParseError("premature EOI");
            string key;
            if (first.Type == QmpJsonTokenType.String)
            {
                _next++;
                key = String(first);
            }
            else
            {
                // QEMU reads the whole value before it finds that it is not a string.
                var writer = _writer;
                _writer = null;
                Value();
                _writer = writer;
                throw new ParseError("key is not a string in object");
            }

            if (Pop().Type != QmpJsonTokenType.Colon)
            {
                throw new ParseError("missing : in object pair");
            }

            _writer?.WritePropertyName(key);
            Value();
            if (!keys.Add(key))
            {
                throw new ParseError("duplicate key");
            }
        }

        void Array()
        {
            Pop();
            _writer?.WriteStartArray();
            if ((Peek() ?? throw new ParseError("premature EOI")).Type == QmpJsonTokenType.RightBracket)
            {
                Pop();
            }
            else
            {
                Value();
                for (var token = Pop(); token.Type != QmpJsonTokenType.RightBracket; token = Pop())
                {
                    if (token.Type != QmpJsonTokenType.Comma)
                    {
                        throw new ParseError("expected separator in list");
                    }

                    Value();
                }
            }

            _writer?.WriteEndArray();
        }

        void Keyword(QmpJsonToken token)
        {
            var text = Text(token);
            if (text.SequenceEqual("true"u8))
            {
                _writer?.WriteBooleanValue(true);
            }
            else if (text.SequenceEqual("false"u8))
            {
                _writer?.WriteBooleanValue(false);
            }
            else if (text.SequenceEqual("null"u8))
            {
                _writer?.WriteNullValue();
            }
            else
            {
                // The message is cut to 1 KiB anyway: do not copy a huge keyword whole.
                throw new ParseError($"invalid keyword '{Encoding.ASCII.GetString(text[..Math.Min(text.Length, 1024)])}'");
            }
        }

        void Number(QmpJsonToken token)
        {
            var text = Text(token);
            if (token.Type == QmpJsonTokenType.Integer && long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var signed))
            {
                _writer?.WriteNumberValue(signed);
            }
            else if (token.Type == QmpJsonTokenType.Integer && text[0] != (byte)'-' && ulong.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var unsigned))
            {
                _writer?.WriteNumberValue(unsigned);
            }
            else
            {
                var value = double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
                // QEMU prints a double with "%.17g"; a value out of range (QEMU's "inf") keeps its digits.
                _writer?.WriteRawValue(double.IsFinite(value)
                    ? value.ToString("G17", CultureInfo.InvariantCulture).Replace("E", "e", StringComparison.Ordinal)
                    : Encoding.ASCII.GetString(text));
            }
        }

        /// <summary>A string token's value: escapes decoded, the UTF-8 checked as QEMU checks it.</summary>
        string String(QmpJsonToken token)
        {
            var text = Text(token);
            var quote = text[0];
            var value = new StringBuilder(text.Length);
            var at = 1;
            while (text[at] != quote)
            {
                if (text[at] != (byte)'\\')
                {
                    var codePoint = ModifiedUtf8.Decode(text[at..], out var length);
                    if (codePoint < 0)
                    {
                        throw new ParseError("invalid UTF-8 sequence in string");
                    }

                    ModifiedUtf8.AppendCodePoint(value, codePoint);
                    at += length;
                    continue;
                }

                var escape = at;
                at += 2;
                switch (text[escape + 1])
                {
                    case (byte)'"': value.Append('"'); break;
                    case (byte)'\'': value.Append('\''); break;
                    case (byte)'\\': value.Append('\\'); break;
                    case (byte)'/': value.Append('/'); break;
                    case (byte)'b': value.Append('\b'); break;
                    case (byte)'f': value.Append('\f'); break;
                    case (byte)'n': value.Append('\n'); break;
                    case (byte)'r': value.Append('\r'); break;
                    case (byte)'t': value.Append('\t'); break;
                    case (byte)'u':
                    {
                        var codePoint = Hex4(text, at);
                        at += 4;
                        if (codePoint is >= 0xD800 and <= 0xDBFF && at + 1 < text.Length && text[at] == (byte)'\\' && text[at + 1] == (byte)'u')
                        {
                            var trailing = Hex4(text, at + 2);
                            if (trailing is >= 0xDC00 and <= 0xDFFF)
                            {
                                codePoint = 0x10000 + ((codePoint & 0x3FF) << 10) + (trailing & 0x3FF);
                                at += 6;
                            }
                            else
                            {
                                codePoint = -1;
                            }
                        }

                        if (!ModifiedUtf8.IsValid(codePoint))
                        {
                            // QEMU quotes the escape as written, cut at the end of the token.
                            var quoted = text[escape..Math.Min(at, text.Length)];
                            throw new ParseError($"{ModifiedUtf8.Quote(quoted)} is not a valid Unicode character");
                        }

                        ModifiedUtf8.AppendCodePoint(value, codePoint);
                        break;
                    }

                    default:
                        throw new ParseError("invalid escape sequence in string");
                }
            }

            return value.ToString();
        }

        /// <summary>Four hex digits at <paramref name="at"/>, or -1 (past the token's end reads as a zero byte).</summary>
        static int Hex4(ReadOnlySpan<byte> text, int at)
        {
            var value = 0;
            for (var i = at; i < at + 4; i++)
            {
                var digit = i < text.Length ? HexDigit(text[i]) : -1;
                if (digit < 0)
                {
                    return -1;
                }

                value = (value << 4) | digit;
            }

            return value;
        }

        static int HexDigit(byte b) => b switch
        {
            >= (byte)'0' and <= (byte)'9' => b - '0',
            >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
            >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
            _ => -1,
        };
    }
}
