using BlockMirror.Block.Drivers;
using BlockMirror.Nbd.Client;
using BlockMirror.TestKit;

namespace BlockMirror.Nbd.Tests;

/// <summary>
/// NBD file names read as QEMU 7.2 reads them. Every expectation here was first observed with qemu-img 7.2
/// (<c>qemu-img info NAME</c> against qemu-nbd: the image name it shows, the export the server was asked
/// for, or the refusal); the refusals are also checked against qemu-img itself, side by side.
/// </summary>
public sealed class NbdFileNameTests
{
    static NbdFileNameOptions Unix(string path, string? export) => new(path, null, null, export);

    static NbdFileNameOptions Inet(string host, string port, string? export) => new(null, host, port, export);

    public static TheoryData<string, NbdFileNameOptions> Accepted => new()
    {
        // URIs over TCP.
        { "nbd://127.0.0.1:10999/disk", Inet("127.0.0.1", "10999", "disk") },
        { "nbd+tcp://127.0.0.1:10999/disk", Inet("127.0.0.1", "10999", "disk") },
        { "nbd://localhost/disk", Inet("localhost", "10809", "disk") },
        { "nbd://h:0/disk", Inet("h", "10809", "disk") },
        { "nbd://h:010999/disk", Inet("h", "10999", "disk") },
        { "nbd://h:10999", Inet("h", "10999", null) },
        { "nbd://h:10999/", Inet("h", "10999", null) },
        { "nbd://h:10999//disk", Inet("h", "10999", "/disk") },
        { "nbd://h:1/disk/../x", Inet("h", "1", "disk/../x") },
        { "nbd://[::1]:10999/disk", Inet("::1", "10999", "disk") },
        { "nbd://[fe80::1%25eth0]:1/disk", Inet("fe80::1%eth0", "1", "disk") },
        { "nbd://%31%32%37.0.0.1:10999/disk", Inet("127.0.0.1", "10999", "disk") },
        { "nbd://h%2Fx:1/disk", Inet("h/x", "1", "disk") },
        { "nbd://1.2.3.4.5:10999/disk", Inet("1.2.3.4.5", "10999", "disk") },
        { "nbd://h:1/a%20b", Inet("h", "1", "a b") },
        { "nbd://h:1/di%00sk", Inet("h", "1", "di") },
        { "nbd://h:1/caf%C3%A9", Inet("h", "1", "café") },
        { "nbd://user:pw@h:1/disk#frag", Inet("h", "1", "disk") },
        { "nbd://h:1/disk?", Inet("h", "1", "disk") },
        { "nbd://h:1/disk?=a", Inet("h", "1", "disk") },
        { "nbd://h:1/disk?&", Inet("h", "1", "disk") },
        // URIs over a Unix socket.
        { "nbd+unix:///disk?socket=/tmp/s.sock", Unix("/tmp/s.sock", "disk") },
        { "nbd+unix://?socket=/tmp/s.sock", Unix("/tmp/s.sock", null) },
        { "nbd+unix:///d%69sk?socket=%2Ftmp/s%2esock", Unix("/tmp/s.sock", "disk") },
        { "nbd+unix:///disk?so%63ket=/s", Unix("/s", "disk") },
        { "nbd+unix:///disk?socket=/s&", Unix("/s", "disk") },
        { "nbd+unix:///disk?&socket=/s", Unix("/s", "disk") },
        { "nbd+unix:///disk?=a&socket=/s", Unix("/s", "disk") },
        { "nbd+unix:///disk?socket=/s;", Unix("/s", "disk") },
        { "nbd+unix:///disk?socket=/s&;", Unix("/s", "disk") },
        { "nbd+unix:///disk?socket=/s=x", Unix("/s=x", "disk") },
        { "nbd+unix:///disk?socket=", Unix("", "disk") },
        { "nbd+unix:///disk?socket=/s#f", Unix("/s", "disk") },
        { "nbd+unix://u@/disk?socket=/s", Unix("/s", "disk") },
        { "nbd+unix://:0/disk?socket=/s", Unix("/s", "disk") },
        // The legacy forms.
        { "nbd:unix:/tmp/s.sock:exportname=disk", Unix("/tmp/s.sock", "disk") },
        { "nbd:unix:/tmp/s.sock", Unix("/tmp/s.sock", null) },
        { "nbd:unix:", Unix("", null) },
        { "nbd:unix:/s:exportname=a:exportname=disk", Unix("/s", "a:exportname=disk") },
        { "nbd:unix:/s:exportname=a%20b", Unix("/s", "a%20b") },
        { "nbd:127.0.0.1:10999:exportname=disk", Inet("127.0.0.1", "10999", "disk") },
        { "nbd:127.0.0.1:10999", Inet("127.0.0.1", "10999", null) },
        { "nbd:h:1:exportname=disk:extra", Inet("h", "1", "disk:extra") },
        { "nbd:[::1]:10999:exportname=disk", Inet("::1", "10999", "disk") },
        { "nbd::10999:exportname=disk", Inet("", "10999", "disk") },
        { "nbd:h,x:1", Inet("h,x", "1", null) },
        { "nbd:h:abc", Inet("h", "abc", null) },
        { "nbd:127.0.0.1:10999,ipv4:exportname=disk", Inet("127.0.0.1", "10999", "disk") },
        { "nbd:127.0.0.1:10999,ipv4=on,ipv6=off,keep-alive,mptcp=on,to=5", Inet("127.0.0.1", "10999", null) },
        { "nbd:h:1,to= 5", Inet("h", "1", null) },
        { "nbd:h:1,to=-5", Inet("h", "1", null) },
        { "nbd:h:1,foo", Inet("h", "1", null) },
        { $"nbd:{new string('a', 64)}:1", Inet(new string('a', 64), "1", null) },
        // A port of more than 32 characters is cut at 32; the rest is read as options.
        { $"nbd:h:{new string('1', 33)}", Inet("h", new string('1', 32), null) },
    };

    [Theory]
    [MemberData(nameof(Accepted))]
    public void An_accepted_name_gives_the_server_and_export_qemu_connects_to(string name, NbdFileNameOptions expected) =>
        Assert.Equal(expected, NbdFileName.Parse(name));

    /// <summary>Refused names and QEMU's words for each.</summary>
    public static TheoryData<string, string> Refused => new()
    {
        { "nbd://h:99999/disk", "No valid URL specified" },
        { "nbd://h:65536/disk", "No valid URL specified" },
        { "nbd://h:/disk", "No valid URL specified" },
        { "nbd://h:10999:5/disk", "No valid URL specified" },
        { "nbd://h:1/disk?foo=bar", "No valid URL specified" },
        { "nbd://h:1/disk?=", "No valid URL specified" },
        { "nbd://h:1/disk?&;&", "No valid URL specified" },
        { "nbd:///disk", "No valid URL specified" },
        { "nbd+tcp:///disk", "No valid URL specified" },
        { "nbd://:10999/disk", "No valid URL specified" },
        { "nbd://[::1/disk", "No valid URL specified" },
        { "nbd://h:1/%", "No valid URL specified" },
        { "nbd://h:1/%zz", "No valid URL specified" },
        { "nbd://h:1/a%2", "No valid URL specified" },
        { "nbd://h:1/a?b#c", "No valid URL specified" },
        { "nbd://h:1/di sk", "No valid URL specified" },
        { "nbd://h:1/x#a b", "No valid URL specified" },
        { "nbd:foo://x", "No valid URL specified" },
        { "nbd+unix:///disk", "No valid URL specified" },
        { "nbd+unix://h/disk?socket=/s", "No valid URL specified" },
        { "nbd+unix://:5/disk?socket=/s", "No valid URL specified" },
        { "nbd+unix:///disk?socket=/s&x=y", "No valid URL specified" },
        { "nbd+unix:///disk?socket=/s;x=y", "No valid URL specified" },
        { "nbd+unix:///disk?x=y;socket=/s", "No valid URL specified" },
        { "nbd+unix:///disk?path=/s", "No valid URL specified" },
        { "nbd+unix:///disk?=&socket=/s", "No valid URL specified" },
        { "nbd+unix:/disk?socket=/s", "File name string for NBD must start with 'nbd:'" },
        { "nbd+tcp:h:1", "File name string for NBD must start with 'nbd:'" },
        { "nbd:", "NBD server address missing" },
        { "nbd::exportname=x", "NBD server address missing" },
        { "nbd:unix:/s:exportname=", "NBD server address missing" },
        { "nbd:h:1:exportname=", "NBD server address missing" },
        { "nbd:127.0.0.1", "error parsing address '127.0.0.1'" },
        { "nbd:foo", "error parsing address 'foo'" },
        { "nbd:127.0.0.1:", "error parsing address '127.0.0.1:'" },
        { $"nbd:{new string('a', 65)}:1", $"error parsing address '{new string('a', 65)}:1'" },
        { "nbd::", "error parsing port in address ':'" },
        { "nbd:[::1:10999", "error parsing IPv6 address '[::1:10999'" },
        { "nbd:[::1]", "error parsing IPv6 address '[::1]'" },
        { "nbd:[::1]10999", "error parsing IPv6 address '[::1]10999'" },
        { "nbd:[a:b]]:1", "error parsing IPv6 address '[a:b]]:1'" },
        { "nbd:[]:1", "error parsing IPv6 address '[]:1'" },
        { "nbd:h:1,to=x", "error parsing to= argument" },
        { "nbd:h:1,to=5x", "error parsing to= argument" },
        { "nbd:h:1,ipv4=x", "error parsing 'ipv4' flag '=x'" },
        { "nbd:h:1,ipv6x", "error parsing 'ipv6' flag 'x'" },
        { "nbd:h:1,keep-alive=q", "error parsing 'keep-alive' flag '=q'" },
        { "nbd:h:1,mptcp=x", "error parsing 'mptcp' flag '=x'" },
        { "nbd:h:1,ipv6=on,,x", "error parsing 'ipv6' flag '=on,,x'" },
        { "nbd:h:1,ipv4=x,ipv6=y", "error parsing 'ipv4' flag '=x,ipv6=y'" },
        { "nbd:h:1,ipv6=y,ipv4=x", "error parsing 'ipv4' flag '=x'" },
        { "nbd:h:1,to=-5,ipv4=x", "error parsing 'ipv4' flag '=x'" },
    };

    [Theory]
    [MemberData(nameof(Refused))]
    public void A_refused_name_is_refused_in_qemus_words(string name, string message) =>
        Assert.Equal(message, Assert.Throws<BlockOpenException>(() => NbdFileName.Parse(name)).Message);

    /// <summary>
    /// Where QEMU 7.2 has no answer we refuse: <c>?socket</c> without '=' makes it connect to a null path
    /// (it crashes), and a percent-decoded name that is not UTF-8 cannot be a name here.
    /// </summary>
    [Theory]
    [InlineData("nbd+unix:///disk?socket")]
    [InlineData("nbd://h:1/%FF")]
    [InlineData("nbd+unix:///disk?socket=/s%C3")]
    public void Where_qemu_crashes_or_cannot_name_it_the_name_is_refused(string name) =>
        Assert.Equal("No valid URL specified", Assert.Throws<BlockOpenException>(() => NbdFileName.Parse(name)).Message);

    /// <summary>
    /// <c>nbds://</c> and <c>nbds+unix://</c> (QEMU 7.2: <c>Unknown protocol 'nbds'</c>; a deliberate difference):
    /// the nbd and nbd+unix forms with TLS, credentials by object id or directory (QEMU's default directory when
    /// neither is given), and the certificate's host name.
    /// </summary>
    public static TheoryData<string, NbdFileNameOptions> AcceptedTls => new()
    {
        { "nbds://h/disk", Inet("h", "10809", "disk") with { Tls = new NbdUriTls(null, "/etc/pki/qemu", null) } },
        { "nbds://h:10999/disk?tls-creds=tls0", Inet("h", "10999", "disk") with { Tls = new NbdUriTls("tls0", null, null) } },
        { "nbds://h/disk?tls-certificates=/p%20ki&tls-hostname=dest.example", Inet("h", "10809", "disk") with { Tls = new NbdUriTls(null, "/p ki", "dest.example") } },
        { "nbds+unix:///disk?socket=/s", Unix("/s", "disk") with { Tls = new NbdUriTls(null, "/etc/pki/qemu", null) } },
        { "nbds+unix:///disk?tls-creds=c&socket=/s", Unix("/s", "disk") with { Tls = new NbdUriTls("c", null, null) } },
        { "nbds+unix://?socket=/s;tls-hostname=n", Unix("/s", null) with { Tls = new NbdUriTls(null, "/etc/pki/qemu", "n") } },
    };

    [Theory]
    [MemberData(nameof(AcceptedTls))]
    public void An_nbds_name_gives_the_server_export_and_tls_credentials(string name, NbdFileNameOptions expected) =>
        Assert.Equal(expected, NbdFileName.Parse(name));

    [Theory]
    [InlineData("nbds://h/disk?tls-creds=a&tls-certificates=/d")]
    [InlineData("nbds://h/disk?tls-creds=a&tls-creds=b")]
    [InlineData("nbds://h/disk?tls-creds=")]
    [InlineData("nbds://h/disk?tls-hostname")]
    [InlineData("nbds://h/disk?socket=/s")]
    [InlineData("nbds://h/disk?foo=bar")]
    [InlineData("nbds+unix:///disk")]
    [InlineData("nbds+unix:///disk?tls-creds=a")]
    [InlineData("nbds+unix:///disk?socket=/s&foo=bar")]
    [InlineData("nbds:///disk")]
    [InlineData("nbd://h/disk?tls-creds=a")]
    [InlineData("nbd+unix:///disk?socket=/s&tls-creds=a")]
    public void A_bad_nbds_name_or_tls_parameters_on_plain_nbd_are_refused(string name) =>
        Assert.Equal("No valid URL specified", Assert.Throws<BlockOpenException>(() => NbdFileName.Parse(name)).Message);

    /// <summary>
    /// The refusals side by side with qemu-img 7.2: it says <c>Could not open 'NAME': REASON</c>, and REASON
    /// must be ours. None of these names reaches a server.
    /// </summary>
    [SkippableFact]
    public async Task Every_refusal_is_qemu_imgs()
    {
        ExternalTool.Require("qemu-img");
        var names = Refused.Select(row => (string)row[0]).ToArray();
        var results = await Task.WhenAll(names.Select(name => ExternalTool.RunAsync("qemu-img", ["info", name], TimeSpan.FromSeconds(30))));
        for (var i = 0; i < names.Length; i++)
        {
            var ours = Assert.Throws<BlockOpenException>(() => NbdFileName.Parse(names[i])).Message;
            Assert.Equal($"qemu-img: Could not open '{names[i]}': {ours}", results[i].StandardError.TrimEnd());
        }
    }
}
