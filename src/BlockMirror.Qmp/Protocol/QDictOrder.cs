using System.Text;
using System.Text.Json;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// The order QEMU 7.2 walks the members of a parsed JSON object (a QDict: 512 hash buckets in order, the
/// newest entry first within a bucket). QMP checks a command's members in this order, so when several are
/// wrong, the one QEMU names is the first in it; following it lets us name the same one.
/// </summary>
static class QDictOrder
{
    const int Buckets = 512;

    /// <summary>The object's members in QEMU's iteration order.</summary>
    public static List<JsonProperty> Members(JsonElement obj)
    {
        var members = obj.EnumerateObject().Select((member, index) => (member, index, bucket: Bucket(member.Name))).ToList();
        members.Sort((a, b) => a.bucket != b.bucket ? a.bucket.CompareTo(b.bucket) : b.index.CompareTo(a.index));
        return [.. members.Select(m => m.member)];
    }

    /// <summary>QEMU's qdict hash of the key's bytes (the "tdb" hash), reduced to a bucket.</summary>
    static int Bucket(string key)
    {
        var bytes = Encoding.UTF8.GetBytes(key);
        var value = unchecked(0x238F13AFu * (uint)bytes.Length);
        for (var i = 0; i < bytes.Length; i++)
        {
            value = unchecked(value + ((uint)bytes[i] << (i * 5 % 24)));
        }

        return (int)(unchecked((1103515243u * value) + 12345u) % Buckets);
    }
}
