using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace BlockMirror.Net.Listening;

/// <summary>
/// getaddrinfo(3) for a listening TCP socket, called as QEMU calls it: the same addresses in the same order
/// (/etc/hosts, then DNS; a null host: the wildcard addresses), service names from /etc/services, and
/// gai_strerror's words on failure. .NET's Dns is not used: for the machine's own name it lists every
/// interface's address where getaddrinfo gives what /etc/hosts says.
/// </summary>
static partial class AddressInfo
{
    const int AiPassive = 0x1, AiNumericHost = 0x4, SockStream = 1, AfInet = 2, AfInet6 = 10;

    /// <summary>The addresses for <paramref name="host"/> (null: any) and <paramref name="service"/>.</summary>
    /// <exception cref="ArgumentException">getaddrinfo failed; the message is gai_strerror's.</exception>
    public static unsafe List<IPEndPoint> Resolve(string? host, string service, AddressFamily family, bool numeric)
    {
        var hints = new Hints
        {
            Flags = AiPassive | (numeric ? AiNumericHost : 0),
            Family = family switch { AddressFamily.InterNetwork => AfInet, AddressFamily.InterNetworkV6 => AfInet6, _ => 0 },
            SocketType = SockStream,
        };
        var error = GetAddrInfo(host, service, &hints, out var list);
        if (error != 0)
        {
            throw new ArgumentException(Marshal.PtrToStringUTF8(GaiStrError(error)) ?? $"getaddrinfo error {error}");
        }

        try
        {
            var addresses = new List<IPEndPoint>();
            for (var entry = (Entry*)list; entry is not null; entry = entry->Next)
            {
                var address = new ReadOnlySpan<byte>(entry->Address, (int)entry->AddressLength);
                var port = (ushort)(address[2] << 8 | address[3]);
                IPEndPoint? endPoint = entry->Family switch
                {
                    AfInet => new IPEndPoint(new IPAddress(address.Slice(4, 4)), port),
                    // sockaddr_in6: family, port, flow info, the address, the scope id.
                    AfInet6 => new IPEndPoint(new IPAddress(address.Slice(8, 16), MemoryMarshal.Read<uint>(address[24..])), port),
                    _ => null,
                };
                if (endPoint is not null && !addresses.Contains(endPoint))
                {
                    addresses.Add(endPoint);
                }
            }

            return addresses;
        }
        finally
        {
            FreeAddrInfo(list);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct Hints
    {
        public int Flags, Family, SocketType, Protocol;
        public uint AddressLength;
        public nint Address, CanonicalName, Next;
    }

    /// <summary>struct addrinfo as glibc lays it out.</summary>
    [StructLayout(LayoutKind.Sequential)]
    unsafe struct Entry
    {
        public int Flags, Family, SocketType, Protocol;
        public uint AddressLength;
        public byte* Address;
        public byte* CanonicalName;
        public Entry* Next;
    }

    [LibraryImport("libc", EntryPoint = "getaddrinfo", StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int GetAddrInfo(string? node, string service, Hints* hints, out nint result);

    [LibraryImport("libc", EntryPoint = "freeaddrinfo")]
    private static partial void FreeAddrInfo(nint list);

    [LibraryImport("libc", EntryPoint = "gai_strerror")]
    private static partial nint GaiStrError(int error);
}
