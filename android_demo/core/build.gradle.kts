// Pure-JVM module: bundle manifest, settings, prompt format, streaming text, stats. No Android dependency,
// Java 8 language level (the offline build dexes it with dx, which reads class files up to Java 8).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

dependencies {
    compileOnly(libs.json) // provided by Android at run time
    testImplementation(libs.json)
    testImplementation(libs.junit.jupiter)
    testRuntimeOnly(libs.junit.platform.launcher)
}

tasks.test {
    useJUnitPlatform()
}
