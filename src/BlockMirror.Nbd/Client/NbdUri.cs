using System.Text;

namespace BlockMirror.Nbd.Client;

/// <summary>
/// NBD URIs as QEMU 7.2 reads them (block/nbd.c nbd_parse_uri over util/uri.c, an RFC 3986 parser):
/// <code>
///   nbd[+tcp]://[user@]HOST[:PORT][/EXPORT][?][#fragment]      HOST: name, or [IPv6] (brackets dropped)
///   nbd+unix://[user@][:0][/EXPORT]?socket=PATH[#fragment]     no host, no port
/// </code>
/// PORT is 1-65535 (0 or none: 10809); one leading '/' of the path is dropped and the rest is the export
/// (<c>nbd://h//x</c> asks for <c>/x</c>); host, path and query values are percent-decoded, and a decoded
/// NUL ends the value, as QEMU's C strings end there. A query parameter is refused on nbd and nbd+tcp; on
/// nbd+unix the only one is <c>socket</c>. QEMU's parameter splitting is kept: <c>&amp;</c> separates, and
/// <c>;</c> only when there is no <c>&amp;</c>; an empty section and one without a name (<c>=x</c>) are
/// skipped. The user part and the fragment are read and ignored.
/// </summary>
/// <remarks>
/// <para>Where QEMU 7.2 crashes (<c>?socket</c> with no <c>=</c>: a null path) this refuses the URI; a
/// percent-decoded value that is not UTF-8 is refused too (names and paths are strings here).</para>
/// <para><c>nbds://</c> and <c>nbds+unix://</c>, which QEMU 7.2 does not know, are the same URIs over TLS, as
/// libnbd reads them; their query also takes <c>tls-creds=ID</c> (credentials made with <c>--object</c> or
/// <c>object-add</c>, QEMU's way), or <c>tls-certificates=DIR</c> (a certificates directory, libnbd's
/// parameter), and <c>tls-hostname=NAME</c>. See <see cref="NbdFileNameOptions"/>.</para>
/// </remarks>
static class NbdUri
{
    /// <summary>The URI's options, or null when QEMU would say "No valid URL specified".</summary>
    public static NbdFileNameOptions? Parse(string uri)
    {
        if (!TryParse(uri, out var parts))
        {
            return null;
        }

        bool unix, tls;
        switch (parts.Scheme)
        {
            case "nbd" or "nbd+tcp":
                (unix, tls) = (false, false);
                break;
            case "nbd+unix":
                (unix, tls) = (true, false);
                break;
            case "nbds":
                (unix, tls) = (false, true);
                break;
            case "nbds+unix":
                (unix, tls) = (true, true);
                break;
            default:
                return null;
        }

        string? export = null;
        if (parts.Path is { } rawPath)
        {
            var path = Unescape(rawPath);
            if (path is null)
            {
                return null;
            }

            path = path.StartsWith('/') ? path[1..] : path;
            export = path.Length > 0 ? path : null;
        }

        var parameters = QueryParameters(parts.Query);
        if (parameters is null)
        {
            return null;
        }

        NbdUriTls? security = null;
        if (tls)
        {
            // The TLS parameters, each at most once; what is left is QEMU's (socket, for nbds+unix).
            security = NbdUriTls.Take(parameters);
            if (security is null)
            {
                return null;
            }
        }

        if (parameters.Count > 1 || unix != (parameters.Count == 1))
        {
            return null;
        }

        if (unix)
        {
            var (name, value) = parameters[0];
            return parts.Host is null && parts.Port == 0 && name == "socket" && value is not null
                ? new NbdFileNameOptions(value, null, null, export) { Tls = security }
                : null;
        }

        if (parts.Host is null || Unescape(parts.Host) is not { } server)
        {
            return null;
        }

        // QEMU drops the first and last character of a decoded host that starts with '[' (an IPv6 literal).
        var host = server.StartsWith('[') ? server[1..Math.Max(1, server.Length - 1)] : server;
        return new NbdFileNameOptions(null, host, (parts.Port == 0 ? NbdServerAddress.DefaultPort : parts.Port).ToString(System.Globalization.CultureInfo.InvariantCulture), export)
        {
            Tls = security,
        };
    }

    /// <summary>The pieces of a URI, raw (still percent-encoded); a missing piece is null, a missing port 0.</summary>
    readonly record struct Parts(string Scheme, string? Host, int Port, string? Path, string? Query);

    /// <summary>RFC 3986's <c>scheme ":" hier-part ["?" query] ["#" fragment]</c>, with util/uri.c's choices.</summary>
    static bool TryParse(string s, out Parts parts)
    {
        parts = default;
        var i = 0;
        if (i >= s.Length || !char.IsAsciiLetter(s[i]))
        {
            return false;
        }

        while (i < s.Length && (char.IsAsciiLetterOrDigit(s[i]) || s[i] is '+' or '-' or '.'))
        {
            i++;
        }

        if (At(s, i) != ':')
        {
            return false;
        }

        var scheme = s[..i];
        i++;
        string? host = null, path = null, query = null;
        var port = 0;
        var pathStart = i;
        if (At(s, i) == '/' && At(s, i + 1) == '/')
        {
            i += 2;
            if (!TryParseAuthority(s, ref i, out host, out port))
            {
                return false;
            }

            pathStart = i;
            while (At(s, i) == '/')
            {
                i++;
                SkipSegment(s, ref i);
            }
        }
        else if (At(s, i) == '/')
        {
            // path-absolute: "/" [ segment-nz *( "/" segment ) ]
            i++;
            if (SkipSegment(s, ref i))
            {
                while (At(s, i) == '/')
                {
                    i++;
                    SkipSegment(s, ref i);
                }
            }
        }
        else if (IsPathChar(s, i))
        {
            SkipSegment(s, ref i);
            while (At(s, i) == '/')
            {
                i++;
                SkipSegment(s, ref i);
            }
        }

        if (i > pathStart)
        {
            path = s[pathStart..i];
        }

        if (At(s, i) == '?')
        {
            var start = ++i;
            while (IsPathChar(s, i) || At(s, i) is '/' or '?')
            {
                Next(s, ref i);
            }

            query = s[start..i];
        }

        if (At(s, i) == '#')
        {
            i++;
            while (IsPathChar(s, i) || At(s, i) is '/' or '?' or '[' or ']')
            {
                Next(s, ref i);
            }
        }

        parts = new Parts(scheme, host, port, path, query);
        return i == s.Length;
    }

    /// <summary><c>[ userinfo "@" ] host [ ":" port ]</c>; the host is raw (an IP literal keeps its brackets), null when empty.</summary>
    static bool TryParseAuthority(string s, ref int i, out string? host, out int port)
    {
        host = null;
        port = 0;
        var user = i;
        while (IsUnreserved(At(s, user)) || IsPercentEncoded(s, user) || IsSubDelimiter(At(s, user)) || At(s, user) == ':')
        {
            Next(s, ref user);
        }

        if (At(s, user) == '@')
        {
            i = user + 1;
        }

        var start = i;
        if (At(s, i) == '[')
        {
            var close = s.IndexOf(']', i + 1);
            if (close < 0)
            {
                return false;
            }

            i = close + 1;
        }
        else
        {
            // util/uri.c tries an IPv4 address first, but a slip in it never matches one: every host is a
            // reg-name, which an IPv4 address also is.
            while (IsUnreserved(At(s, i)) || IsPercentEncoded(s, i) || IsSubDelimiter(At(s, i)))
            {
                Next(s, ref i);
            }
        }

        host = i > start ? s[start..i] : null;
        if (At(s, i) != ':')
        {
            return true;
        }

        i++;
        if (!char.IsAsciiDigit(At(s, i)))
        {
            return false;
        }

        while (char.IsAsciiDigit(At(s, i)))
        {
            port = port * 10 + (s[i] - '0');
            if (port > ushort.MaxValue)
            {
                return false;
            }

            i++;
        }

        return true;
    }

    /// <summary>Skips <c>*pchar</c>; true when it was not empty.</summary>
    static bool SkipSegment(string s, ref int i)
    {
        var start = i;
        while (IsPathChar(s, i))
        {
            Next(s, ref i);
        }

        return i > start;
    }

    /// <summary>
    /// util/uri.c's query_params_parse: sections split at '&amp;' (or at ';' when no '&amp;' follows),
    /// <c>name=value</c>, <c>name</c> (a null value), <c>name=</c> (an empty one); empty sections and
    /// <c>=value</c> skipped. Null when a name or value does not decode.
    /// </summary>
    static List<(string Name, string? Value)>? QueryParameters(string? query)
    {
        List<(string, string?)> parameters = [];
        var i = 0;
        while (query is not null && i < query.Length)
        {
            var end = query.IndexOf('&', i);
            if (end < 0)
            {
                end = query.IndexOf(';', i);
            }

            if (end < 0)
            {
                end = query.Length;
            }

            var equals = query.IndexOf('=', i, end - i);
            (string? Name, string? Value, bool Skip) section =
                end == i ? (null, null, true)
                : equals < 0 ? (Unescape(query[i..end]), null, false)
                // A lone "=": QEMU decodes the name with length 0, which its decoder takes as "to the end of the
                // query", so the section becomes one parameter named after all that follows.
                : equals + 1 == end ? (Unescape(equals == i ? query[i..] : query[i..equals]), "", false)
                : equals == i ? (null, null, true)
                : (Unescape(query[i..equals]), Unescape(query[(equals + 1)..end]), false);
            if (!section.Skip)
            {
                if (section.Name is null || (equals >= 0 && section.Value is null))
                {
                    return null;
                }

                parameters.Add((section.Name, section.Value));
            }

            i = end + 1;
        }

        return parameters;
    }

    /// <summary>
    /// Percent-decodes; what follows a decoded NUL is cut off (QEMU's value is a C string). Null when the bytes
    /// are not UTF-8.
    /// </summary>
    static string? Unescape(string raw)
    {
        var bytes = new List<byte>(raw.Length);
        for (var i = 0; i < raw.Length; i++)
        {
            if (IsPercentEncoded(raw, i))
            {
                bytes.Add(Convert.FromHexString(raw.AsSpan(i + 1, 2))[0]);
                i += 2;
            }
            else
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(raw[i].ToString()));
            }
        }

        var nul = bytes.IndexOf(0);
        var text = nul >= 0 ? bytes.GetRange(0, nul) : bytes;
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString([.. text]);
        }
        catch (DecoderFallbackException)
        {
            return null;
        }
    }

    static char At(string s, int i) => i < s.Length ? s[i] : '\0';

    /// <summary>One character, or a whole %HH.</summary>
    static void Next(string s, ref int i) => i += At(s, i) == '%' ? 3 : 1;

    static bool IsUnreserved(char c) => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_' or '~';

    static bool IsSubDelimiter(char c) => c is '!' or '$' or '&' or '\'' or '(' or ')' or '*' or '+' or ',' or ';' or '=';

    static bool IsPercentEncoded(string s, int i) => At(s, i) == '%' && char.IsAsciiHexDigit(At(s, i + 1)) && char.IsAsciiHexDigit(At(s, i + 2));

    /// <summary>RFC 3986's pchar: unreserved, %HH, a sub-delimiter, ':' or '@'.</summary>
    static bool IsPathChar(string s, int i) =>
        IsUnreserved(At(s, i)) || IsPercentEncoded(s, i) || IsSubDelimiter(At(s, i)) || At(s, i) is ':' or '@';
}
