package org.edgecpm.demo.core;

/** Resident and peak memory of the app process, parsed from /proc/self/status (VmRSS, VmHWM). */
public final class MemoryStats {
    public final long rssBytes;
    public final long peakRssBytes;

    MemoryStats(long rssBytes, long peakRssBytes) {
        this.rssBytes = rssBytes;
        this.peakRssBytes = peakRssBytes;
    }

    public static MemoryStats parseProcStatus(String status) {
        return new MemoryStats(field(status, "VmRSS:"), field(status, "VmHWM:"));
    }

    private static long field(String status, String key) {
        for (String line : status.split("\n")) {
            if (line.startsWith(key)) {
                String[] parts = line.substring(key.length()).trim().split("\\s+");
                long v = Long.parseLong(parts[0]);
                return parts.length > 1 && parts[1].equalsIgnoreCase("kB") ? v * 1024 : v;
            }
        }
        return -1;
    }

    public String summary() {
        return String.format(java.util.Locale.ROOT, "RSS %d MB (peak %d MB)", rssBytes / 1000000,
                peakRssBytes / 1000000);
    }
}
