plugins {
    alias(libs.plugins.android.application)
}

android {
    namespace = "org.edgecpm.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.edgecpm.demo"
        minSdk = 26 // ExecuTorch's native libraries are built for API 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        ndk {
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }

    packaging {
        jniLibs.useLegacyPackaging = true
    }
}

dependencies {
    implementation(project(":core"))
    // brings libexecutorch.so, the LlmModule API, fbjni and soloader through its Maven metadata
    implementation(libs.executorch.android)
}
